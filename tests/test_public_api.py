import importer


def test_public_api_all_is_sorted_and_importable():
    assert importer.__all__ == sorted(importer.__all__)
    for name in importer.__all__:
        assert hasattr(importer, name)


def test_public_api_import_options_hide_key_in_repr():
    options = importer.ImportOptions(api_key="sekret-key-123")
    assert "sekret-key-123" not in repr(options)
