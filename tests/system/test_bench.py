"""The benchmark: FLOPs counted from the layers against a hand count, the DVC log parser,
and ``python -m benchmarks --quick`` end to end (real workers, a real ``dvc repro`` of
the fixture subset) writing a complete JSON and Markdown report into a temporary folder.
No timing is asserted: only that every number is there and sane."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_env
from benchmarks.candidates import Candidate
from benchmarks.flops import flops_summary
from benchmarks.report import diagnostics_paragraph, epoch_lines
from benchmarks.spread import spread
from benchmarks.stages import stage_times
from benchmarks.summary import diagnostics_cost
from pipeline.core.errors import UserError
from pipeline.core.params import VariantSpec
from pipeline.train.model import build_lenet


def hand_forward_flops_bn_hidden() -> int:
    """bn_hidden, counted by hand: 2 FLOPs per multiply-add, +1 per bias add; pooling k*k,
    BN 2, tanh 1, softmax 3 per output element."""
    conv1 = 2 * 5 * 5 * 1 * 6 * 28 * 28            # 'same', no bias
    bn_tanh1 = (2 + 1) * 28 * 28 * 6
    pool1 = 2 * 2 * 27 * 27 * 6                    # 2x2, stride 1
    conv2 = 2 * 5 * 5 * 6 * 16 * 23 * 23           # valid, no bias
    bn_tanh2 = (2 + 1) * 23 * 23 * 16
    pool2 = 2 * 2 * 11 * 11 * 16                   # 2x2, stride 2
    conv3 = 2 * 5 * 5 * 16 * 120 * 7 * 7 + 7 * 7 * 120
    bn_tanh3 = (2 + 1) * 7 * 7 * 120
    fc1 = 2 * 5880 * 84 + 84
    bn_tanh4 = (2 + 1) * 84
    output = 2 * 84 * 10 + 10 + 3 * 10
    return conv1 + bn_tanh1 + pool1 + conv2 + bn_tanh2 + pool2 + conv3 + bn_tanh3 + fc1 + bn_tanh4 + output


HAND_MATMUL = 2 * (25 * 1 * 6 * 784 + 25 * 6 * 16 * 529 + 25 * 16 * 120 * 49 + 5880 * 84 + 84 * 10)


def test_flops_bn_hidden_match_a_hand_count():
    f = flops_summary(build_lenet(VariantSpec(name="bn_hidden", bn_hidden=True)))
    assert f["forward_flops_per_image"] == hand_forward_flops_bn_hidden() == 8_556_560
    assert f["matmul_flops_per_image"] == HAND_MATMUL == 8_467_920
    assert f["train_flops_per_image"] == 3 * f["forward_flops_per_image"]
    by_layer = {r["layer"]: r["flops"] for r in f["layers"]}
    assert by_layer["conv2"] == 2_539_200 and by_layer["pool1"] == 17_496 and by_layer["flatten"] == 0


def test_flops_follow_the_variant():
    plain = flops_summary(build_lenet(VariantSpec(name="plain", conv_bias=True)))
    dropout = flops_summary(build_lenet(VariantSpec(name="d", dropout_input=0.2, dropout_hidden=0.5)))
    # plain: bn_hidden without its BN layers, plus the conv1/conv2 biases
    bn_cost = 2 * (28 * 28 * 6 + 23 * 23 * 16 + 7 * 7 * 120 + 84)
    assert plain["forward_flops_per_image"] == hand_forward_flops_bn_hidden() - bn_cost + 28 * 28 * 6 + 23 * 23 * 16
    # dropout: one multiply per element on the input and after every conv/dense
    drop_cost = 28 * 28 + 28 * 28 * 6 + 23 * 23 * 16 + 7 * 7 * 120 + 84
    assert dropout["forward_flops_per_image"] == hand_forward_flops_bn_hidden() - bn_cost + drop_cost


def test_stage_times_from_running_stage_lines():
    lines = [(10.0, "Running stage 'download':"), (10.1, "> python -m pipeline.data.download"),
             (12.5, "Running stage 'train@bn_hidden-0':"), (30.0, "Updating lock file 'dvc.lock'"),
             (31.0, "Running stage 'compare':"), (33.0, "Use `dvc push` to send your updates to remote storage.")]
    t = stage_times(lines, start=9.0, end=34.0)
    assert t["stages"] == pytest.approx({"download": 2.5, "train@bn_hidden-0": 18.5, "compare": 3.0})
    assert t["startup_seconds"] == pytest.approx(1.0) and t["total_seconds"] == pytest.approx(25.0)
    assert stage_times([(1.0, "Data and pipelines are up to date.")], 0.0, 1.5)["stages"] == {}


def test_spread():
    s = spread([3.0, 1.0, 2.0])
    assert (s["n"], s["median"], s["min"], s["max"]) == (3, 2.0, 1.0, 3.0)
    assert s["iqr"] == pytest.approx(1.0) and s["values"] == [3.0, 1.0, 2.0]
    assert spread([5.0])["iqr"] == 0.0


def test_candidate_parsing():
    c = Candidate.parse("spe=16+threads=2x1+xla")
    assert (c.steps_per_execution, c.intra_threads, c.inter_threads, c.xla, c.determinism) == (16, 2, 1, True, False)
    assert Candidate.parse("baseline") == Candidate()
    assert Candidate.parse("onednn=0").onednn is False and Candidate.parse("arrays").arrays
    assert Candidate.parse("jax").backend == "jax" and Candidate.parse("baseline").backend is None
    assert Candidate.parse("noconv").convergence is False and Candidate.parse("baseline").convergence
    with pytest.raises(UserError, match="cannot read 'fast'"):
        Candidate.parse("spe=4+fast")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_quick_benchmark_writes_a_complete_report(tmp_path):
    out = tmp_path / "out"
    env = subprocess_env(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out-dir", str(out),
                           "--candidates", "spe=2", "arrays", "--candidate-variants", "bn_hidden"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (ROOT / "reports" / "benchmark.json").exists() or \
        json.loads((ROOT / "reports" / "benchmark.json").read_text())["mode"] != "quick"
    r = json.loads((out / "benchmark.json").read_text())

    assert r["mode"] == "quick" and r["setup"]["repetitions"] == 1
    assert r["setup"]["variants"] == ["bn_hidden", "dropout"]
    assert isinstance(r["quiet"]["quiet"], bool) and r["quiet"]["other_cores_mean"] >= 0
    for variant in ("bn_hidden", "dropout"):
        t = r["throughput"][variant]
        assert set(t["modes"]) == {"bare", "pipeline", "pipeline_nodiag"}
        for mode, m in t["modes"].items():
            assert m["n_train"] == 512 and m["epochs"] == 2 and m["batch_size"] == 256, mode
            for key in ("images_per_second", "steady_images_per_second", "fit_seconds", "peak_rss_bytes"):
                assert m[key]["n"] == 1 and _positive(m[key]["median"]), (mode, key)
                assert m[key]["min"] <= m[key]["median"] <= m[key]["max"]
            assert len(m["epoch_seconds"][0]) == 2 and all(_positive(s) for s in m["epoch_seconds"][0])
            assert 0 <= m["test_accuracy"][0] <= 1 and _positive(m["test_loss"][0])
            # no "< 1": a quick run's small matmul on a busy machine can under-measure the peak
            assert _positive(m["achieved_flops_per_second"]) and _positive(m["fraction_of_peak"])
            assert m["fraction_of_peak"] == pytest.approx(m["achieved_flops_per_second"]
                                                          / r["hardware"]["peak_flops_per_second"])
            assert len(m["weights_sha256"][0]) == 64 and m["deterministic"] is None  # 1 run: unknown
            assert m["steps_per_execution"] == 1 and m["jit_compile"] is False
            assert m["other_cores_max"] >= 0 and len(m["other_cores_mean"]) == 1
        for key in ("ratio", "ratio_steady", "ratio_nodiag", "ratio_nodiag_steady"):
            assert _positive(t[key]), key
        assert t["ratio"] == pytest.approx(t["modes"]["pipeline"]["images_per_second"]["median"]
                                           / t["modes"]["bare"]["images_per_second"]["median"])
        assert r["headline"][variant]["ratio"] == t["ratio"]

    hw = r["hardware"]
    for key in ("numpy_matmul_flops_per_second", "tf_matmul_flops_per_second", "peak_flops_per_second"):
        assert 1e8 < hw[key] < 1e14, key
    assert hw["flops"]["bn_hidden"]["forward_flops_per_image"] == hand_forward_flops_bn_hidden()
    assert hw["flops"]["bn_hidden"]["train_flops_per_image"] == 3 * hand_forward_flops_bn_hidden()

    st = r["stages"]
    # choose@ writes "no grid" in a second and trains nothing
    assert list(st["stage_seconds"]) == ["download", "normalize", "train@bn_hidden-0", "choose@bn_hidden",
                                         "compare"]
    assert all(_positive(s) for s in st["stage_seconds"].values())
    assert st["repro_seconds"] >= sum(st["stage_seconds"].values())
    assert st["noop_seconds"]["n"] == 3 and _positive(st["noop_seconds"]["median"])
    assert st["peak_rss_bytes_by_stage"]["train@bn_hidden-0"] > 100 * 2 ** 20

    mem = r["memory"]
    assert mem["peak_rss_bytes"] >= mem["train_worker_peak_rss_bytes"] > 100 * 2 ** 20
    assert mem["peak_rss_bytes"] >= mem["train_stage_peak_rss_bytes"] > 100 * 2 ** 20
    assert isinstance(mem["meets_target"], bool)

    assert set(r["candidates"]) == {"baseline", "spe=2", "arrays"}
    assert all(set(by_variant) == {"bn_hidden"} for by_variant in r["candidates"].values())  # --candidate-variants
    spe = r["candidates"]["spe=2"]["bn_hidden"]
    assert spe["steps_per_execution"] == 2 and _positive(spe["speedup"]) and _positive(spe["vs_bare_steady"])
    assert _positive(spe["paired_speedup_steady"]["median"]) and spe["paired_speedup_steady"]["n"] == 1
    # two steps per execution is the same sequence of SGD updates: the same weights
    assert spe["same_weights_as_baseline"] is True

    # NumPy arrays into fit: Keras shuffles its own way, so other weights, but it ran
    arrays = r["candidates"]["arrays"]["bn_hidden"]
    assert _positive(arrays["speedup"]) and arrays["same_weights_as_baseline"] is False

    md = (out / "benchmark.md").read_text()
    for heading in ("## Throughput", "## Stage times", "## Memory", "## Hardware limit", "## Epoch by epoch",
                    "## Candidates"):
        assert heading in md
    assert "Quick mode" in md and "8,556,560" in md and "| train@bn_hidden-0 |" in md
    assert "| bn_hidden | candidate arrays |" in md

    (out / "benchmark.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--render", str(out / "benchmark.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "benchmark.md").read_text() == md


def test_epoch_table_counts_slow_epochs():
    def mode(epoch_seconds):
        return {"n_train": 1000, "epoch_seconds": epoch_seconds}

    r = {"throughput": {"v": {"modes": {"bare": mode([[1.0, 2.0], [1.0, 1.0]]),
                                        "pipeline": mode([[1.5, 1.1], [1.0, 1.5]])}}},
         "candidates": {"spe=2": {"v": mode([[1.0, 1.0]])}}}
    rows = [line for line in epoch_lines(r) if line.startswith("| v |")]
    # fastest epoch 1,000 images/s; slow below 700 (2.0 s = 500/s, 1.5 s = 667/s; 1.1 s = 909/s is not)
    assert rows == ["| v | bare Keras (notebook way) | 1,000 500; 1,000 1,000 | 1 of 2 |",
                    "| v | pipeline, diagnostics on (as shipped) | 667 909; 1,000 667 | 1 of 2 |",
                    "| v | candidate spe=2 | 1,000 1,000 | 0 of 1 |"]


def test_diagnostics_cost_is_paired_by_round():
    def mode(fit, steady, final=None):
        m = {"fit_seconds": spread(fit), "steady_images_per_second": spread(steady)}
        if final is not None:
            m["diagnostics_final_seconds"] = spread(final)
        return m

    # Round 2 ran on a slower machine for both modes: paired, it still costs 10%, not 65%.
    modes = {"pipeline": mode([11.0, 22.0], [900.0, 450.0], final=[1.0, 2.0]),
             "pipeline_nodiag": mode([10.0, 20.0], [990.0, 495.0])}
    added = diagnostics_cost(modes)
    assert added["fit"]["values"] == pytest.approx([0.1, 0.1])
    assert added["steady"]["values"] == pytest.approx([0.1, 0.1])
    assert added["with_final"]["values"] == pytest.approx([0.2, 0.2])
    r = {"targets": {"diagnostics_added": 0.05}, "throughput": {"v": {"modes": modes, "diagnostics_added": added}}}
    line = diagnostics_paragraph(r)
    assert "v: **10.0% (10.0 to 10.0)** of fit time (misses the target)" in line
    assert "after fit (1.5 (1.0–2.0) s) 20.0% (20.0 to 20.0)" in line


def test_render_of_a_missing_file_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--render", str(tmp_path / "nope.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--render: cannot read" in proc.stderr and "nope.json" in proc.stderr


def test_fixed_cost_phases_split_the_wall_time():
    import re

    from benchmarks.fixed_cost import phases

    lines = [(10.5, "loading"), (14.0, "training plain-s0: …; run abc"), (30.0, "done plain-s0: test loss 0.1")]
    p = phases(lines, launched=10.0, exited=31.5, fit_seconds=12.0)
    assert p == pytest.approx({"start": 4.0, "fit": 12.0, "finish": 4.0, "exit": 1.5, "wall": 21.5, "fixed": 9.5})
    assert p["start"] + p["fit"] + p["finish"] + p["exit"] == pytest.approx(p["wall"])
    with pytest.raises(RuntimeError, match="printed no done line"):
        phases(lines[:2], 10.0, 31.5, 12.0)
    bare = [(1.0, "bare: fit starts"), (3.0, "bare: done")]
    assert phases(bare, 0.0, 3.5, 1.5, re.compile("bare: fit starts"), re.compile("bare: done"))["fixed"] == \
        pytest.approx(2.0)


def test_quick_fixed_cost_times_the_stage_command_before_and_after(tmp_path, prepared_fixture):
    """The real training command in project copies (this tree and HEAD) and a bare Keras process."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fixed_cost", "--quick", "--before", "HEAD",
                           "--prepared", str(prepared_fixture), "--out-dir", str(out)],
                          cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "fixed_cost.json").read_text())
    assert set(r["summary"]) == {"pipeline (this tree)", "pipeline at HEAD", "bare Keras"}
    assert r["variant"] == "bn_dropout" and r["reps"] == 1 and r["train_images"] == "512"
    for name, runs in r["runs"].items():
        (run,) = runs
        assert all(run[phase] > 0 for phase in ("start", "fit", "finish", "exit")), (name, run)
        assert run["start"] + run["fit"] + run["finish"] + run["exit"] == pytest.approx(run["wall"])
        assert run["fixed"] == pytest.approx(run["wall"] - run["fit"])
    md = (out / "fixed_cost.md").read_text()
    assert "| pipeline at HEAD |" in md and "Before → after:" in md and "beyond bare Keras's" in md
    assert md.count("× bare Keras's (its median fit time over this one's)") == 2
    (out / "fixed_cost.md").unlink()
    rendered = subprocess.run([sys.executable, "-m", "benchmarks.fixed_cost", "--render", str(out / "fixed_cost.json")],
                              cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0 and (out / "fixed_cost.md").read_text() == md
    bad = subprocess.run([sys.executable, "-m", "benchmarks.fixed_cost", "--quick", "--before", "no-such-commit",
                          "--out-dir", str(out / "bad")], cwd=ROOT, env=subprocess_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --before no-such-commit: not a commit of this repository; give a commit id, tag or branch"]
    assert not (out / "bad").exists()
    no_data = subprocess.run([sys.executable, "-m", "benchmarks.fixed_cost", "--quick", "--prepared",
                              str(tmp_path / "none"), "--out-dir", str(out / "bad")], cwd=ROOT,
                             env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert no_data.returncode == 2 and no_data.stderr.strip().splitlines() == [
        f"error: no prepared arrays in {tmp_path / 'none'}; run `dvc repro normalize` first or pass --prepared"]
