"""The engine host: one served model's engine and the hash tables it gathers rows from, for the Python backend.

    host = EngineHost.open(root, manifest, "phoenix_ranker", device="cpu")
    results = host.run([arrays, arrays, ...])      # one entry per request: {output: array} or a RequestError

For each call:
1. every request is checked before any work (`request.check_request`: names, dtypes, shapes, limits, value
   ranges); a request that fails gets its RequestError back and the others go on;
2. absent optional inputs (the May IP hashes, dwell, timestamps) become their zero value;
3. requests that differ only in B and C share one engine call (`batching`: candidates padded with hash 0,
   exact thanks to candidate isolation);
4. hashed inputs become their rows of the tables (hash 0 = the zero padding row): on the CPU the tables are
   memory-mapped and their pages made resident when the host opens, so no request waits for a page fault; on a
   GPU (the gpu-python target) the tables live on that GPU and the rows are gathered there, so a request moves
   only its hashes to the device, never its embeddings;
5. the engine runs, and each request gets its own rows and candidate count back.

Standard library and numpy only (the engine's runtime is imported by `engines` when it opens): part of
phoenix_runtime, which the build copies whole into the repository.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import batching, engines
from .manifest import find_artifact
from .request import Limits, RequestError, check_request, describe_input_error, resolve_shape

PAGE = 4096


def resident(table: np.ndarray) -> np.ndarray:
    """Touch one value per page of a memory-mapped table, so its pages are mapped into this process now rather
    than at the first request that gathers from them (they stay shared with every process mapping the file)."""
    flat = table.reshape(-1)
    step = max(1, PAGE // flat.itemsize)
    for start in range(0, flat.size, step << 16):                 # in slices: no big temporary
        flat[start:start + (step << 16):step].sum()
    return table


class EngineHost:
    """A served engine model (its manifest record) with its engine, tables and limits."""

    def __init__(self, name: str, record: dict, engine, tables: dict, limits: Limits, extra_inputs: tuple = ()):
        self.name, self.record, self.engine, self.limits = name, record, engine, limits
        self.inputs, self.outputs = [*record["inputs"], *extra_inputs], record["outputs"]
        self.lookups = record.get("lookups", {})
        self.tables = tables

    @classmethod
    def open(cls, root, manifest: dict, name: str, device: str = "cpu", as_model: str | None = None,
             extra_inputs: tuple = (), device_tables: bool | None = None) -> "EngineHost":
        """The host of served model `name` of the repository at `root`. `as_model`: the served model it answers
        for (errors name it); `extra_inputs`: specs of inputs it checks with the engine's but does not feed to it
        (the scoring facts of a model that also scores); `device_tables` (default: on a GPU): the tables as torch
        tensors on `device`, gathered there; else memory-mapped and made resident."""
        root = Path(root)
        rec = manifest["served"][name]
        kind = rec["engine"]
        artifact = find_artifact(manifest, rec["graph"], engines.ARTIFACT_KIND[kind], device)
        engine = engines.open_engine(artifact, root, device, kind)
        specs = manifest["tables"].get(rec.get("tables"), {}) if rec.get("lookups") else {}
        if device_tables if device_tables is not None else device.startswith("cuda"):
            import torch
            tables = {e: torch.from_numpy(np.load(root / t["path"])).to(device) for e, t in specs.items()}
        else:
            tables = {e: resident(np.load(root / t["path"], mmap_mode="r")) for e, t in specs.items()}
        return cls(as_model or name, rec, engine, tables, Limits.from_dict(manifest["limits"]), tuple(extra_inputs))

    def complete(self, arrays: dict) -> dict:
        """`arrays` with each absent optional input as its zero value, shaped like the request (B, C)."""
        missing = [s for s in self.inputs if s["name"] not in arrays and s.get("optional")]
        if not missing:
            return arrays
        dims = {}
        for s in self.inputs:
            a = arrays.get(s["name"])
            if a is not None:
                for n, d in zip(a.shape, s["shape"]):
                    if isinstance(d, str):
                        dims.setdefault(d, n)
        dims = {"B": dims.get("B", 1), "C": dims.get("C", 1)}
        return {**arrays, **{s["name"]: np.zeros(resolve_shape(s["shape"], dims), dtype=s["dtype"]) for s in missing}}

    def check(self, arrays: dict) -> dict:
        """The request's arrays, completed and checked (RequestError naming the input or the limit)."""
        arrays = self.complete(arrays)
        check_request(self.inputs, arrays, self.limits, self.name)
        return arrays

    def run(self, requests: list[dict]) -> list:
        """One result per request: its outputs {name: array}, or the exception that answers it: a RequestError
        (the request is wrong: it names the input or the limit) or any other error of the engine call it shared
        (not the request's fault)."""
        results: list = [None] * len(requests)
        good = []
        for i, arrays in enumerate(requests):
            try:
                good.append((i, self.check(arrays)))
            except RequestError as e:
                results[i] = e
        for group in batching.groups([a for _, a in good], self.inputs):
            members = [good[j] for j in group]
            try:
                if len(members) == 1:
                    results[members[0][0]] = self.forward(members[0][1])
                    continue
                feed, parts = batching.merge([a for _, a in members], self.inputs)
                for (i, _), part in zip(members, batching.split(self.forward(feed), parts, self.outputs)):
                    results[i] = part
            except Exception as e:  # noqa: BLE001 - each request of the call is answered with it
                for i, _ in members:
                    results[i] = e
        return results

    def forward(self, arrays: dict) -> dict:
        """Checked arrays -> the engine's outputs (hashed inputs gathered into their rows first)."""
        feed = dict(arrays)
        for emb, (hashes, entity) in self.lookups.items():
            table = self.tables[entity]
            if isinstance(table, np.ndarray):
                feed[emb] = np.take(table, feed[hashes], axis=0)
            else:   # a torch tensor on the engine's device: only the hashes cross to it
                import torch
                index = torch.from_numpy(np.ascontiguousarray(feed[hashes])).to(table.device, non_blocking=True)
                feed[emb] = table[index]
        out = self.engine({n: feed[n] for n in self.engine.input_names})
        errors = out.get("input_error")
        if errors is not None and errors.any():   # the graph's own range check (never reached after check_request)
            raise RequestError(f"{self.name}: {describe_input_error(int(errors.max()), self.engine.inputs)}")
        return out
