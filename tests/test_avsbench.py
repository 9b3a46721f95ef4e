from avsbench_fixtures import write_object_dataset, write_semantic_dataset


def test_fixture_writes_both_layouts(tmp_path):
    sem = write_semantic_dataset(tmp_path / "sem", semantic_labels=True)
    assert (sem / "metadata.csv").is_file()
    assert sorted(p.name for p in (sem / "v1s" / "s4_dog_train" / "labels_rgb").iterdir()) == ["0.png"]
    obj = write_object_dataset(tmp_path / "obj")
    assert (obj / "s4_meta_data.csv").is_file() and (obj / "ms3_meta_data.csv").is_file()
