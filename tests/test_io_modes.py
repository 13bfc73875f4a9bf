"""Files and folders medclf writes get the user's usual permissions (umask), not mkstemp's 0600 / mkdtemp's 0700."""

from __future__ import annotations

import os
import stat

import pytest

from medclf.io import current_umask, write_json


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert current_umask() == umask


def test_written_file_follows_the_umask(tmp_path, umask):
    write_json(tmp_path / "new" / "metrics.json", {"n": 1})
    assert mode(tmp_path / "new" / "metrics.json") == {0o022: 0o644, 0o027: 0o640, 0o002: 0o664}[umask]
    assert mode(tmp_path / "new") == {0o022: 0o755, 0o027: 0o750, 0o002: 0o775}[umask]


def test_cache_folder_follows_the_umask(tmp_path, umask, make_tiny_cache):
    cache = make_tiny_cache(tmp_path / "cache", n=10, size=8)
    assert mode(cache) == {0o022: 0o755, 0o027: 0o750, 0o002: 0o775}[umask]  # made by mkdtemp, then renamed
    assert mode(cache / "cache.json") == {0o022: 0o644, 0o027: 0o640, 0o002: 0o664}[umask]
