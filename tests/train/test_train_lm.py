"""Next-token training: saved trajectories, manifest, resume (bit-exact, also after kill -9), errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from prism_cli import main
from prism_train.config import TrainConfig
from prism_train.lm import DocumentIds, batch_for_step, lr_at, train

SMALL = dict(
    steps=12, save_every=4, batch_size=4, seq_len=32, warmup=3, lr=3e-3, model={"hidden_size": 64, "num_layers": 2}
)


def weights(step_dir):
    return load_file(step_dir / "model.safetensors")


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(55, cfg) == pytest.approx(0.55)


class DocTokenizer:
    """Document "k,n" -> n copies of token 10+k: each document is a run of one token, easy to find."""

    eos_token_id, pad_token_id = 2, 0

    def __call__(self, text):
        k, n = map(int, text.split(","))
        return {"input_ids": [10 + k] * n}


def runs(row):
    """(token, length, followed by EOS) for each run of equal tokens in a row, padding dropped."""
    out, i = [], 0
    while i < len(row):
        j = i
        while j < len(row) and row[j] == row[i]:
            j += 1
        if row[i] not in (0, 2):
            out.append((row[i], j - i, j < len(row) and row[j] == 2))
        i = j
    return out


@pytest.mark.parametrize("step", range(5))
def test_packing_never_cuts_a_document_that_fits(step):
    seq_len, lengths = 32, {}

    def sample(rng):
        k = rng.randrange(10**6)
        lengths[10 + k] = n = rng.choice([3, 9, 17, 25, 31, 70])  # 70 > seq_len: split into pieces
        return f"{k},{n}"

    ids, labels = batch_for_step(sample, DocTokenizer(), step, 0, 16, seq_len)
    assert ids.shape == labels.shape == (16, seq_len)
    seen = {}
    for r, lab in zip(ids.tolist(), labels.tolist()):
        real = [t for t in r if t != 0]
        assert r == real + [0] * (seq_len - len(real)), "padding only at the end of a row"
        assert lab == real + [-100] * (seq_len - len(real)), "labels = tokens, -100 on padding"
        for tok, n, eos in runs(r):
            seen[tok] = seen.get(tok, 0) + n
            if lengths[tok] < seq_len:  # a document that fits a row (with its EOS) is whole, then EOS
                assert n == lengths[tok] and eos
    assert sum(seen.values()) > 0.85 * 16 * seq_len, "rows are mostly filled"
    assert all(n <= lengths[t] for t, n in seen.items())
    again = batch_for_step(sample, DocTokenizer(), step, 0, 16, seq_len)
    assert torch.equal(again[0], ids) and torch.equal(again[1], labels), "a pure function of the step"


def test_document_ids_are_the_tokenizers_ids_and_the_memo_is_bounded():
    import random

    from prism_analysis.tiny import train_tokenizer
    from prism_train.data.mix import load_mix

    rng = random.Random(0)
    samplers = [load_mix(m).sampler("train") for m in ("pretrain", "math_code_science")]
    texts = [s(rng) for s in samplers for _ in range(150)]
    tok = train_tokenizer(texts[::2], vocab_size=400)
    doc_ids = DocumentIds(tok, max_tokens=3000)
    for text in texts + texts[:50]:  # the last 50 again: from the memo
        assert list(doc_ids(text)) == tok(text)["input_ids"] + [tok.eos_token_id]
    assert 0 <= doc_ids.room < 3000 and sum(map(len, doc_ids.memo.values())) == 3000 - doc_ids.room
    assert len(doc_ids.memo) < len(set(texts)), "the memo stopped growing at max_tokens"
    tok.backend_tokenizer.enable_truncation(5)  # set in tokenizer.json: the wrapper turns it off per call
    assert list(DocumentIds(tok)(texts[0])) == tok(texts[0])["input_ids"] + [tok.eos_token_id]
    assert len(tok(texts[0])["input_ids"]) > 5
    tok.backend_tokenizer.no_truncation()
    # a run's memo, shared over steps, gives the batches a fresh one per call gives
    sample = samplers[1]
    for step in range(3):
        with_memo = batch_for_step(sample, tok, step, 0, 8, 64, doc_ids=doc_ids)
        fresh = batch_for_step(sample, tok, step, 0, 8, 64)
        assert all(torch.equal(a, b) for a, b in zip(with_memo, fresh))


def test_train_saves_a_loadable_trajectory(tmp, device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = train(TrainConfig(**SMALL, save_steps=[1, 2], device=device), tmp / "run", progress=False)
    assert [s["step"] for s in m["steps"]] == [0, 1, 2, 4, 8, 12]
    man = json.loads((tmp / "run" / "trajectory.json").read_text())
    assert man["phase"] == "pretrain" and man["parent"] is None and man["mix"]["name"] == "pretrain"
    for s in man["steps"]:
        assert {"step", "path", "tokens", "loss", "lr", "time"} <= set(s)
    last = tmp / "run" / "step_000012"
    model = AutoModelForCausalLM.from_pretrained(last)
    tok = AutoTokenizer.from_pretrained(last)
    assert model.config.vocab_size == len(tok)
    assert (last / "training_state.pt").is_file()
    assert not (tmp / "run" / "step_000008" / "training_state.pt").exists()
    assert 0.9 * 12 * 4 * 32 < m["steps"][-1]["tokens"] <= 12 * 4 * 32  # trained tokens, padding not counted
    # the analysis side reads the manifest directly
    from prism_analysis.weights.trajectory import analyse_trajectory

    traj = analyse_trajectory(tmp / "run", progress=False, device="cpu")
    assert traj.steps == [0, 1, 2, 4, 8, 12]
    # mid-training from a saved step records its parent
    mid = train(
        TrainConfig(**{**SMALL, "steps": 4}, phase="mid", mix="mcs", init=str(last), device=device),
        tmp / "mid",
        progress=False,
    )
    assert mid["parent"] == str(last) and mid["mix"]["name"] == "math_code_science"


def test_resume_is_bit_exact(tmp):
    train(TrainConfig(**SMALL), tmp / "full", progress=False)
    train(TrainConfig(**SMALL), tmp / "cut", progress=False, stop_after=6)  # stops after step 6; last save 4
    assert not (tmp / "cut" / "step_000012").exists()
    m = train(TrainConfig(**SMALL), tmp / "cut", progress=False)  # resumes from step 4
    assert [s["step"] for s in m["steps"]] == [0, 4, 8, 12]
    a, b = weights(tmp / "full" / "step_000012"), weights(tmp / "cut" / "step_000012")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_saves_resume_exactly_from_fp32_master(tmp):
    cfg = TrainConfig(**SMALL, save_dtype="bfloat16")
    train(cfg, tmp / "full", progress=False)
    train(cfg, tmp / "cut", progress=False, stop_after=5)
    train(cfg, tmp / "cut", progress=False)
    a, b = weights(tmp / "full" / "step_000012"), weights(tmp / "cut" / "step_000012")
    assert all(v.dtype == torch.bfloat16 for v in a.values() if v.is_floating_point())
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp):
    args = [
        "train",
        "--phase",
        "pretrain",
        "--mix",
        "pretrain",
        "--init",
        "llama",
        "--steps",
        "40",
        "--save-every",
        "5",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--quiet",
    ]
    # every part runs in its own process with the same settings, so no state of this test process
    # (its torch thread count, say) can make the float results differ
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "prism_cli", *args, "--out", str(tmp / "killed")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    manifest = tmp / "killed" / "trajectory.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.is_file() and len(json.loads(manifest.read_text())["steps"]) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    steps_seen = [s["step"] for s in json.loads(manifest.read_text())["steps"]]
    assert 40 not in steps_seen, "the run finished before it could be killed"
    for out in ("killed", "clean"):  # resume the killed run; run a clean one
        done = subprocess.run([sys.executable, "-m", "prism_cli", *args, "--out", str(tmp / out)], env=env)
        assert done.returncode == 0
    a, b = weights(tmp / "clean" / "step_000040"), weights(tmp / "killed" / "step_000040")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp / "killed").glob(".step_*"))


@pytest.mark.parametrize(
    "extra,problem",
    [
        (["--mix", "nonsense"], "not a preset"),
        (["--init", "/no/such/checkpoint"], "neither a model family"),
    ],
)
def test_cli_bad_input(tmp, capsys, extra, problem):
    code = main(["train", "--out", str(tmp / "r"), "--steps", "2", "--quiet", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("prism: error:") and problem in err and "\n" not in err


def test_refuses_a_directory_of_another_config(tmp, capsys):
    train(TrainConfig(**{**SMALL, "steps": 2}), tmp / "r", progress=False)
    with pytest.raises(Exception, match="different configuration"):
        train(TrainConfig(**{**SMALL, "steps": 3}), tmp / "r", progress=False)
    m = train(TrainConfig(**{**SMALL, "steps": 3}), tmp / "r", progress=False, force=True)
    assert m["steps"][-1]["step"] == 3


@pytest.mark.slow
def test_eval_cli(tmp, capsys):
    train(TrainConfig(**{**SMALL, "steps": 2}), tmp / "r", progress=False)
    assert main(["eval", str(tmp / "r" / "step_000002"), "--n", "4", "--out", str(tmp / "ev"), "--pass-k", "1,2"]) == 0
    res = json.loads((tmp / "ev" / "eval.json").read_text())
    for k in ("math_easy", "math_hard", "code", "science", "macro", "general_ppl", "math_easy_pass@1"):
        assert k in res
    assert res["macro"] == pytest.approx((res["math"] + res["code"] + res["science"]) / 3)
    assert all(res[b] == sum(res["scores"][b]) / 4 for b in ("math_easy", "math_hard", "code", "science"))
    again = subprocess.run(
        [sys.executable, "-m", "prism_cli", "eval", str(tmp / "r" / "step_000002"), "--n", "4"],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and f"{res['general_ppl']:.4f}" in again.stdout  # deterministic


def test_pass_at_k():
    from prism_train.evaluate import pass_at_k

    assert pass_at_k(10, 0, 1) == 0 and pass_at_k(10, 10, 1) == 1
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)


def test_greedy_eval_generates_each_distinct_problem_once_and_scores_every_draw(tmp, monkeypatch):
    """Planted answers: the fake model solves a known half of the distinct problems; every draw of a
    problem must get that problem's score, and each distinct prompt is generated exactly once."""
    from prism_analysis.representations.model_loader import load_model
    from prism_train import evaluate as ev

    train(TrainConfig(**{**SMALL, "steps": 1, "save_every": 1}), tmp / "r", progress=False)
    model, tok = load_model(tmp / "r" / "step_000001", device="cpu", progress=False)
    n = 60
    draws = {b: ev.benchmark(b, n) for b in ev.BENCHMARKS}
    assert len({p.prompt for p in draws["science"]}) < n  # the level-1 science space repeats itself
    problems = {p.prompt: p for ps in draws.values() for p in ps}
    solved = {q: problems[q].completion for q in sorted(problems)[::2]}
    asked = []

    def fake_generate(model, tokenizer, prompts, *args, **kwargs):
        asked.append(list(prompts))
        return [solved.get(p, "<think>\nno idea\n</think>\nAnswer: -1") for p in prompts]

    monkeypatch.setattr(ev, "generate", fake_generate)
    res = ev.evaluate(model, tok, n=n)
    for b, ps in draws.items():
        assert res["scores"][b] == [int(p.prompt in solved) for p in ps]
        assert res[b] == sum(p.prompt in solved for p in ps) / n
    assert [len(a) for a in asked] == [len(set(a)) for a in asked] == list(res["distinct"].values())
    assert res["distinct"]["science"] < n and res["distinct"]["math_hard"] == n
