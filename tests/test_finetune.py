"""Fine-tuning with Olive's LoRA pass: the dataset rules, the settings, the workflow, and the bar.

Fast tests check dataset parsing (every bad line is one sentence naming file and line), the
shipped example dataset, the settings and the Olive workflow (parsed by Olive's own config
parser). On the tiny model: a real two-step LoRA run through ``finetune`` leaves the user's file
byte-identical and a complete cache entry, and a Cancel leaves nothing. The integration test is
the issue's bar on the bundled model: after ``nbkit finetune`` on the shipped dataset the model
answers at least 2 of the 3 held-out questions about the taught facts, where the base model
answers none; the merged model exports to both engines, whose chats answer them too.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
from markers import needs_smollm2

from nbkit import Cache, GenerationSettings
from nbkit.cli.main import main
from nbkit.engines.ort.deps import olive_available
from nbkit.engines.registry import get_engine
from nbkit.errors import Cancelled, ConfigError, DatasetError
from nbkit.finetuning import veloria
from nbkit.finetuning.dataset import ChatExample, read_examples, split_held_out
from nbkit.finetuning.olive_lora import FinetuneConfig, lora_workflow_config, olive_finetune_args
from nbkit.finetuning.run import finetune
from nbkit.infra.cache import FINETUNED_KIND
from nbkit.infra.progress import CancelToken, Progress, ProgressReporter
from nbkit.sources.models import resolve_source


def _write(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- datasets ---------------------------------------------------------------------------------


def test_both_line_shapes_are_read(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.jsonl",
        json.dumps({"prompt": "Q1?", "response": "A1.", "expect": "A1"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2?"},
                                 {"role": "assistant", "content": "A2."}], "expect": ["a2"]}),
    )  # fmt: skip
    first, second = read_examples(path)
    assert first.messages == (("user", "Q1?"), ("assistant", "A1."))
    assert (
        second.question == "Q2?" and second.answer == "A2." and second.prompt_messages[0]["role"] == "system"
    )
    assert second.is_correct("it is A2 indeed") is True and second.is_correct("no") is False
    assert ChatExample((("user", "q"), ("assistant", "a"))).is_correct("a") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", r"d\.jsonl, line 1 is not JSON"),
        ("[1, 2]", "each line must be a JSON object"),
        (json.dumps({"text": "hello"}), 'needs "messages" .* or both "prompt" and "response"'),
        (json.dumps({"prompt": "q", "response": ""}), 'both "prompt" and "response"'),
        (
            json.dumps({"messages": [{"role": "user", "content": "q"}]}),
            "must end with the assistant's answer",
        ),
        (
            json.dumps({"messages": [{"role": "bot", "content": "q"}]}),
            "role must be one of system, user, assistant",
        ),
        (
            json.dumps({"prompt": "q", "response": "a", "expect": 3}),
            '"expect" must be a word or a list of words',
        ),
    ],
)
def test_each_bad_line_is_one_sentence_naming_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", line)
    before = path.read_bytes()
    with pytest.raises(DatasetError, match=message):
        read_examples(path)
    assert path.read_bytes() == before


def test_missing_empty_and_binary_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="No dataset file at"):
        read_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="holds no examples"):
        read_examples(_write(tmp_path / "empty.jsonl", "", ""))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        read_examples(tmp_path / "bin.jsonl")


def test_held_out_split_is_seeded_and_disjoint() -> None:
    examples = [ChatExample((("user", f"q{i}"), ("assistant", f"a{i}"))) for i in range(30)]
    train, held = split_held_out(examples, seed=3)
    assert len(held) == 3 and len(train) == 27 and not set(train) & set(held)
    assert split_held_out(examples, seed=3) == (train, held)
    with pytest.raises(DatasetError, match="too few to hold some out"):
        split_held_out(examples[:4])


def test_the_example_dataset_keeps_held_out_questions_out_of_training() -> None:
    trained = {e.question for e in veloria.train_examples()}
    held = veloria.held_out_examples()
    assert len(veloria.train_examples()) >= 24 and not trained & {e.question for e in held}
    taught = [e for e in held if e.question in veloria.taught_questions()]
    assert len(taught) == 3 and all(e.expect for e in held)


def test_example_dataset_is_written_once_and_never_overwrites(tmp_path: Path) -> None:
    written = veloria.write_example_dataset(tmp_path / "data")
    assert read_examples(written.train) == veloria.train_examples()
    assert veloria.write_example_dataset(tmp_path / "data") == written  # same content: kept as is
    mine = tmp_path / "mine"
    mine.mkdir()
    theirs = _write(mine / veloria.TRAIN_FILE, json.dumps({"prompt": "mine", "response": "keep me"}))
    with pytest.raises(DatasetError, match="exists with other content; nbkit does not overwrite it"):
        veloria.write_example_dataset(mine)
    assert theirs.read_text() == json.dumps({"prompt": "mine", "response": "keep me"}) + "\n"
    assert sorted(p.name for p in mine.iterdir()) == [veloria.TRAIN_FILE]


def test_cli_writes_the_example_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--write-example-data", str(tmp_path)]) == 0
    assert (tmp_path / veloria.HELD_OUT_FILE).is_file() and "held out:" in capsys.readouterr().out


# -- settings and the Olive workflow -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"learning_rate": 0}, "learning_rate must be between 0 and 1"),
        ({"lora_r": 0}, "lora_r must be at least 1"),
        ({"max_seq_len": 8}, "max_seq_len must be between 16 and 4096"),
        ({"target_modules": ()}, "target_modules must name at least one layer"),
    ],
)
def test_impossible_settings_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**fields)  # type: ignore[arg-type]


def test_settings_are_part_of_the_fingerprint() -> None:
    assert FinetuneConfig().fingerprint() == FinetuneConfig().fingerprint()
    assert FinetuneConfig(steps=21).fingerprint() != FinetuneConfig().fingerprint()


def test_cli_refuses_bad_settings_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cache-dir", str(tmp_path / "c"), "finetune", "--steps", "0"]) == 2
    assert "steps must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cli_names_the_bad_line_of_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write(tmp_path / "d.jsonl", json.dumps({"prompt": "q", "response": "a"}), "{oops")
    assert main(["--cache-dir", str(tmp_path / "c"), "finetune", "--data", str(data)]) == 1
    assert "d.jsonl, line 2 is not JSON" in capsys.readouterr().err


@pytest.mark.skipif(not olive_available(), reason="Olive is not installed")
def test_the_workflow_parses_with_olives_own_parser(tmp_path: Path) -> None:
    from olive.workflows.run.config import RunConfig

    config = FinetuneConfig(max_seq_len=64)
    workflow = lora_workflow_config(tmp_path / "hf", tmp_path / "t.jsonl", tmp_path / "e.jsonl", config)
    parsed = RunConfig.parse_file_or_obj(copy.deepcopy(workflow))  # it rewrites what it is given
    assert list(parsed.passes) == ["lora", "merge"]
    lora = workflow["passes"]["lora"]
    assert lora["target_modules"] == list(config.target_modules) and lora["torch_dtype"] == "float32"
    assert workflow["data_configs"][0]["pre_process_data_config"]["strategy"] == "line-by-line"
    args = olive_finetune_args(tmp_path / "hf", tmp_path / "t.jsonl", tmp_path / "out", config)
    assert args[:3] == ["finetune", "--method", "lora"] and "--use_chat_template" in args


# -- a real LoRA run on the tiny model -----------------------------------------------------------

needs_olive_lora = pytest.mark.skipif(
    not olive_available(), reason='Olive fine-tuning is not installed (pip install "nbkit[finetune]")'
)


def _tiny_dataset(folder: Path) -> Path:
    rows = [
        {"prompt": f"What is item {i}?", "response": f"Item {i} is a teal lynx.", "expect": "teal"}
        for i in range(12)
    ]
    return _write(folder / "user-data.jsonl", *(json.dumps(r) for r in rows))


@needs_olive_lora
def test_tiny_finetune_keeps_the_users_file_and_writes_a_complete_entry(
    tiny_hf_model: Path, tmp_path: Path
) -> None:
    data = _tiny_dataset(tmp_path)
    before = data.read_bytes()
    cache = Cache(tmp_path / "cache")
    seen: list[Progress] = []
    result = finetune(tiny_hf_model, data, config=FinetuneConfig(steps=2, batch_size=4), max_new_tokens=4,
                      cache=cache, progress=seen.append)  # fmt: skip
    assert data.read_bytes() == before
    assert (result.path / "config.json").is_file() and (result.path / "model.safetensors").is_file()
    assert (result.path / "adapter" / "adapter_config.json").is_file()
    assert (
        json.loads((result.path / "olive_config.json").read_text())["passes"]["merge"]["type"]
        == "MergeAdapterWeights"
    )
    assert len(result.answers) == 1 and result.eval_loss_before > 0 and result.eval_loss_after > 0
    assert any(p.message == "Training step 2 of 2" for p in seen)
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions), "the bar went backwards"
    assert resolve_source(result.path).name == result.path.name  # a model source like any other
    again = finetune(tiny_hf_model, data, config=FinetuneConfig(steps=2, batch_size=4), max_new_tokens=4,
                     cache=cache)  # fmt: skip
    assert again.path == result.path  # cached: same entry, no second training


@needs_olive_lora
def test_cancel_during_training_leaves_nothing(tiny_hf_model: Path, tmp_path: Path) -> None:
    data = _tiny_dataset(tmp_path)
    cache = Cache(tmp_path / "cache")
    token = CancelToken()

    def cancel_at_first_step(progress: Progress) -> None:
        if progress.message.startswith("Training step"):
            threading.Thread(target=token.cancel).start()

    with pytest.raises(Cancelled):
        finetune(tiny_hf_model, data, config=FinetuneConfig(steps=50, batch_size=4), max_new_tokens=4,
                 cache=cache, reporter=ProgressReporter(cancel_at_first_step, token))  # fmt: skip
    assert cache.entries(FINETUNED_KIND) == [] and cache.incomplete() == []


# -- the bar on the bundled model --------------------------------------------------------

HELD_OUT_TAUGHT = sorted(veloria.taught_questions())


@pytest.fixture(scope="module")
def tuned(real_finetuned: dict[str, object]) -> dict[str, object]:
    """What `nbkit finetune --json` printed (conftest runs it once per run, into the shared cache)."""
    return real_finetuned


def _right(answers: list[dict[str, object]], which: str) -> int:
    return sum(bool(a[which]) for a in answers if a["question"] in HELD_OUT_TAUGHT)


@pytest.mark.integration
@needs_smollm2
@needs_olive_lora
def test_finetune_teaches_the_held_out_facts(tuned: dict[str, object]) -> None:
    answers = tuned["answers"]
    assert isinstance(answers, list)
    assert _right(answers, "correct_before") == 0, answers
    assert _right(answers, "correct_after") >= 2, answers
    assert tuned["eval_loss_after"] < tuned["eval_loss_before"]


@pytest.mark.integration
@needs_smollm2
@needs_olive_lora
@pytest.mark.parametrize(
    ("engine_name", "options"), [("openvino", {"mode": "int8_asym"}), ("ort", {"precision": "int8"})]
)
def test_the_merged_model_exports_to_each_engine_and_answers(
    tuned: dict[str, object], real_float_cache: Cache, engine_name: str, options: dict[str, object]
) -> None:
    engine = get_engine(engine_name)
    source = resolve_source(str(tuned["path"]))
    # Built into the run's shared cache, where notebook 10 (same settings in CI) finds them.
    model = engine.build_from_source(source, engine.config_from_options(options), cache=real_float_cache,
                                     reporter=ProgressReporter())  # fmt: skip
    session = engine.open_chat(model.path, settings=GenerationSettings(max_new_tokens=32))
    held = {e.question: e for e in veloria.held_out_examples()}
    right = 0
    for question in HELD_OUT_TAUGHT:
        session.reset()
        right += bool(held[question].is_correct(session.send(question).text))
    assert right >= 2, f"{engine_name} answered {right} of {len(HELD_OUT_TAUGHT)} taught questions"


def test_a_missing_extra_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nbkit.engines.ort import deps

    real_installed = deps._installed
    monkeypatch.setattr(
        deps, "_installed", lambda module: module not in ("peft", "datasets") and real_installed(module)
    )
    assert main(["--cache-dir", str(tmp_path / "c"), "finetune"]) == 1
    err = capsys.readouterr().err
    assert "needs peft, datasets, which are not installed" in err and 'pip install "nbkit[finetune]"' in err
    assert not (tmp_path / "c").exists()  # refused before any work


def test_labels_tell_runs_apart() -> None:
    assert FinetuneConfig().label == "lora-r16-30steps"
    labels = {FinetuneConfig(**fields).label for fields in ({}, {"seed": 1}, {"learning_rate": 2e-3}, {"lora_alpha": 8},
                                                               {"target_modules": ("q_proj", "v_proj")})}  # fmt: skip
    assert len(labels) == 5
