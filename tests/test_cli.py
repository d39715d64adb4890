"""The command line and the artifacts directory: export, check, generate, and clear errors."""

import json

import pytest
import torch

import mamba_export as me
from mamba_export.cli import main
from mamba_export.export import artifacts
from mamba_export.runtime.check import open_runtime


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    assert main(["export", "--model", "mamba-tiny", "--out", str(out), "--formats", "torch",
                 "--no-check"]) == 0
    return out


def test_export_writes_manifest_programs_and_weights(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["files"]) == {"prefill.pt2", "decode.pt2"}
    assert manifest["config"]["d_model"] == me.MambaConfig.preset("mamba-tiny").d_model
    sig = {s["name"]: s for s in manifest["graphs"]["decode"]["inputs"]}
    assert sig["input_ids"]["shape"] == ["batch", 1] and sig["ssm_state"]["dtype"] == "float32"
    assert (exported / "model" / "model.safetensors").is_file()


def test_check_command_reports_parity(exported, capsys):
    assert main(["check", "--artifacts", str(exported), "--runtimes", "torch"]) == 0
    assert "torch" in capsys.readouterr().out
    parity = json.loads((exported / "manifest.json").read_text())["parity"]["torch"]
    assert parity["greedy_tokens_equal"] and parity["prefill_logits_rel_err"] <= 1e-5


def test_generate_from_artifacts_equals_eager(exported, capsys):
    assert main(["generate", "--artifacts", str(exported), "--runtime", "torch",
                 "--prompt-ids", "5 6 7", "--max-new-tokens", "6"]) == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    eager = artifacts.load_reference_model(exported)
    want = eager.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=6)[0, 3:].tolist()
    assert printed == want


def test_runner_matches_eager_on_odd_batch(exported):
    runner = open_runtime(exported, "torch", device="cpu")
    eager = artifacts.load_reference_model(exported)
    ids = torch.randint(0, eager.config.vocab_size, (3, 5))
    got, state = runner.prefill(ids, runner.new_state(3))
    want, want_state = eager.prefill(ids, eager.new_state(3))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_missing_manifest_file_and_mismatch_are_clear(exported, tmp_path):
    with pytest.raises(artifacts.ArtifactsError, match="no manifest.json"):
        artifacts.read_manifest(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    manifest = json.loads((exported / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(artifacts.ArtifactsError, match="missing files"):
        artifacts.read_manifest(broken)
    manifest["files"] = {}
    manifest["graphs"]["prefill"]["inputs"][2]["shape"] = [1, "batch", 2, 3]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(artifacts.ArtifactsError, match="re-export"):
        artifacts.read_manifest(broken)
    with pytest.raises(SystemExit, match="no manifest.json"):
        main(["check", "--artifacts", str(tmp_path)])


def test_tensorrt_export_without_tensorrt_says_what_is_needed(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(SystemExit, match=r"TensorRT >= 10\.10"):
        main(["export", "--model", "mamba-tiny", "--out", str(tmp_path / "trt"), "--formats", "tensorrt"])
    assert not (tmp_path / "trt").exists()  # failed before writing anything


def test_bad_cli_input_is_explained(exported):
    with pytest.raises(SystemExit, match="neither a directory nor a preset"):
        main(["export", "--model", "no-such-model", "--out", "x"])
    with pytest.raises(SystemExit, match="outside the vocabulary"):
        main(["generate", "--artifacts", str(exported), "--prompt-ids", "999999"])
    with pytest.raises(SystemExit, match="integers"):
        main(["generate", "--artifacts", str(exported), "--prompt-ids", "a b"])
