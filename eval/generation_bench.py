"""``rag eval generation``: what makes the generator readers fast on a CPU, measured on one reading task.

Each variant times the same work the prompt reader does for one question (prefill the prompt, then
decode a short answer), alternating variants round by round so load drift hits all alike:

- ``passages``: the five retrieved passages in the prompt (what the reader read before) vs
  ``sentences``: the best two evidence sentences (what it reads now);
- ``prefix recomputed`` vs ``prefix cached``: the few-shot examples' key/value cache computed once;
- ``full logits`` vs ``restricted logits``: the output matrix over the whole 262k vocabulary at every
  step vs only the rows of the tokens the copy constraint allows;
- ``int8``: torch dynamic int8 quantization of the body's linear layers (quality checked by the
  cosine between the last hidden states).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

PASSAGE = ("Super Bowl 50 was an American football game to determine the champion of the National Football "
           "League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos "
           "defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third "
           "Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay "
           "Area at Santa Clara, California. ")
QUESTION = "Which NFL team represented the AFC at Super Bowl 50?"
STEPS = 5  # answer tokens decoded per task (SQuAD answers average about three words)


@dataclass
class GenerationBench:
    rows: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"rows": self.rows}


def _time_task(generator, context: str, cached: bool, restricted: bool) -> float:
    import torch

    from rag.answer.copying import restricted_logits
    from rag.answer.readers import cached_prefix, examples, prompt_block

    tok, model = generator.tokenizer, generator.model
    allowed = tok(" " + context[:300], add_special_tokens=False)["input_ids"][:64]
    started = time.perf_counter()
    with generator.session():
        task = tok(prompt_block(context, QUESTION), add_special_tokens=False, return_tensors="pt")["input_ids"]
        if cached:
            _, cache = cached_prefix(generator, examples())
            out = model.model(input_ids=task, cache=cache, use_cache=True)
        else:
            prefix = tok(examples(), return_tensors="pt")["input_ids"]
            out = model.model(input_ids=torch.cat([prefix, task], dim=1), use_cache=True)
        for step in range(STEPS):
            hidden = out.last_hidden_state[:, -1]
            if restricted:
                token = allowed[int(torch.argmax(restricted_logits(model, hidden, allowed)))]
            else:
                token = int(torch.argmax(model.lm_head(hidden)))
            out = model.model(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
    return time.perf_counter() - started


def run(generator, rounds: int = 10, progress=None) -> GenerationBench:
    import copy

    import torch

    variants = [("passages", PASSAGE * 5, False, False), ("passages", PASSAGE * 5, True, True),
                ("sentences", PASSAGE[:330], False, False), ("sentences", PASSAGE[:330], True, False),
                ("sentences", PASSAGE[:330], True, True)]
    int8 = copy.copy(generator)
    int8.model = copy.deepcopy(generator.model)
    int8.model.model = torch.ao.quantization.quantize_dynamic(int8.model.model, {torch.nn.Linear}, dtype=torch.qint8)
    int8.__dict__.pop("_prefix_caches", None)
    timings: dict[tuple, list[float]] = {}
    plan = [(generator, "fp32", v) for v in variants] + [(int8, "int8", variants[-1])]
    for generator_, _, (_, context, cached, restricted) in plan:  # warm-up, fills the prefix caches
        _time_task(generator_, context, cached, restricted)
    for round_ in range(rounds):
        for generator_, precision, (context_name, context, cached, restricted) in plan:
            key = (context_name, cached, restricted, precision)
            timings.setdefault(key, []).append(_time_task(generator_, context, cached, restricted))
        if progress:
            progress(f"round {round_ + 1}/{rounds}")
    with torch.inference_mode():
        ids = generator.tokenizer(PASSAGE, return_tensors="pt")["input_ids"]
        a = generator.model.model(input_ids=ids).last_hidden_state[0, -1]
        b = int8.model.model(input_ids=ids).last_hidden_state[0, -1]
    agreement = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    bench = GenerationBench()
    for (context_name, cached, restricted, precision), values in timings.items():
        bench.rows.append({"context": context_name, "prefix": "cached" if cached else "recomputed",
                           "logits": "restricted" if restricted else "full", "precision": precision,
                           "tokens": len(generator.tokenizer(PASSAGE * 5 if context_name == "passages"
                                                             else PASSAGE[:330])["input_ids"]),
                           "p50_s": round(statistics.median(values), 4),
                           "hidden_cosine": round(agreement, 4) if precision == "int8" else None})
    return bench


def format_table(bench: GenerationBench) -> str:
    lines = [f"One reading task (prompt + {STEPS} answer tokens), p50 seconds", "",
             f"{'context':<10} {'tokens':>6} {'prefix':<11} {'logits':<11} {'precision':<9} {'p50 s':>7} {'cosine':>7}"]
    for r in bench.rows:
        cosine = "-" if r["hidden_cosine"] is None else f"{r['hidden_cosine']:.4f}"
        lines.append(f"{r['context']:<10} {r['tokens']:>6} {r['prefix']:<11} {r['logits']:<11} {r['precision']:<9} "
                     f"{r['p50_s']:>7.3f} {cosine:>7}")
    return "\n".join(lines)
