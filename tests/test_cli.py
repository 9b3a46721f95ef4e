import pickle

from ssp.errors import DataError


def test_data_error_names_file_and_survives_pickling():
    err = DataError("v2/abc/frames/3.jpg", "truncated JPEG")
    assert str(err) == "v2/abc/frames/3.jpg: truncated JPEG"
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.path, back.problem, str(back)) == (DataError, err.path, err.problem, str(err))


def test_subcommand_import_pauses_the_collector_then_restores_it_and_freezes_what_it_loaded():
    import gc
    import sys

    import pytest

    from ssp.cli import import_paused_gc

    seen: list[bool] = []

    class Finder:  # records whether the collector runs while the module is imported
        def find_spec(self, name, path=None, target=None):
            if name == "ssp_gc_probe":
                seen.append(gc.isenabled())
            return None

    sys.meta_path.insert(0, Finder())
    frozen_before = gc.get_freeze_count()
    try:
        with pytest.raises(ModuleNotFoundError):
            import_paused_gc("ssp_gc_probe")
        assert seen == [False] and gc.isenabled()  # paused during, restored after a failure
        assert import_paused_gc("ssp.fileio").__name__ == "ssp.fileio"
        assert gc.isenabled() and gc.get_freeze_count() >= frozen_before
        gc.disable()  # a caller that had it off keeps it off
        import_paused_gc("ssp.fileio")
        assert not gc.isenabled()
    finally:
        sys.meta_path.pop(0)
        gc.enable()
        gc.unfreeze()
