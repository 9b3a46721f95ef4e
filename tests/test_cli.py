import pickle

from ssp.errors import DataError


def test_data_error_names_file_and_survives_pickling():
    err = DataError("v2/abc/frames/3.jpg", "truncated JPEG")
    assert str(err) == "v2/abc/frames/3.jpg: truncated JPEG"
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), back.path, back.problem, str(back)) == (DataError, err.path, err.problem, str(err))
