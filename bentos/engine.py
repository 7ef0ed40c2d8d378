"""A continuous-batching generation engine for causal LMs: torch, transformers and peft only.

Requests share forward passes. A request joins the running batch at the next decode step (its
prompt is prefilled, padded together with the others that arrived since the last step, and its
KV cache is copied into the batch's), and a finished or cancelled one leaves at once. One
background thread runs the loop; callers never run `generate`.

    engine = Engine(model, tokenizer, adapters={"poet": "/path/to/lora"}, kv_budget_tokens=8192)
    stream = engine.submit(Request(prompt_ids, SamplingParams(max_tokens=32), adapter="poet"))
    async for delta in stream:       # text/token deltas; the last one has finish_reason and usage
        ...
    engine.generate(Request(...))    # the same, blocking: a Result

The batch (not transformers' paged `ContinuousBatchingManager`: it takes no per-request adapter
and measured slower here, see bentos/README.md) is a set of left-padded rows with per-row
`position_ids` and a 2-D attention mask, over one preallocated KV slab per layer:

- all rows end at the same slab column; a decode step writes that column in place (no
  concatenation of the cache), the mask gains one column in place; a joining row is written into
  a free slab row, a leaving row is replaced by the last one, and columns that are padding in
  every row are skipped; the slabs are re-allocated (one copy) only when rows or columns run out;
- memory is bounded by `kv_budget_tokens`: a request is admitted only while
  rows x longest possible row (prompt + max_tokens) stays within it; the rest wait in a bounded
  queue (`max_queue`; beyond: `EngineFull`, which the HTTP layer answers 429/503 with
  Retry-After);
- prompts are prefilled in passes of at most `max_prefill_tokens` padded tokens; a longer prompt
  is prefilled in chunks, one per step, so the running rows keep decoding meanwhile;
- LoRA adapters (peft) are chosen per request. A batch whose rows all use one adapter runs with
  that adapter merged into the base weights (`merge_adapter`), so it costs what the base model
  costs; the merge is undone (`unmerge_adapter`) only when the batch's adapter set changes. A
  batch mixing adapters runs unmerged as one forward with peft's `adapter_names=[...]` per row
  ("__base__" for the base model). Unmerging restores the base weights bit for bit
  (subtracting the delta again leaves rounding behind at every switch, which adds up over a
  server's life and flips greedy near-ties): `merge_undo` keeps, per adapter, the original values
  of just the elements the round trip changes. `merge_adapters=False` keeps
  single-adapter batches unmerged (`set_adapter`); `adapter_mode="grouped"` keeps one batch per
  adapter and runs one forward per group (both kept for A/B measurements);
- on a CPU, in float32, the weights of the linear layers may be stored transposed
  (column-major, the same values: `cpu_weight_layout`), which torch's CPU GEMM runs faster for
  the few rows of a decode batch on some CPUs and slower on others; `choose_layout` times both
  at start and keeps the faster (bentos/README.md has the measurements);
- the weights' precision is the caller's (`dtype`, or int8 weight-only linear layers from
  `int8_weights`, with which adapters always run unmerged); `choose_dtype` picks float32,
  bfloat16 or int8 where the engine runs: a pinned one, else bfloat16 on a GPU, else on a CPU
  the candidate that decodes fastest at 1 and at 16 rows (timed at start) if it beats float32
  at both, limited to the dtypes a parity manifest (`runtimes/manifest.json`, written by the
  optimize stage) passed; int8 is a candidate only where the manifest passed it;
- sampling per row: greedy, or temperature + top_p with the request's own `torch.Generator`
  (a seed makes it repeat); stop strings end the text before the first one (a possible start of
  one is held back while streaming); `max_tokens`; end-of-sequence tokens; repetition,
  presence and frequency penalties.

Decoder-only models with full-attention caches (Llama, Qwen2, Mistral without a sliding window,
...) are supported; other cache layouts raise at the first prefill.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import functools
import json
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from int8_weights import is_int8, quantize_int8
from merge_undo import MergeUndo, record

log = logging.getLogger("tuneship.engine")
BASE = "__base__"  # peft's name for "no adapter" in `adapter_names`
FinishReason = Literal["stop", "length", "cancelled", "error"]


# --- errors -------------------------------------------------------------------------------------


class EngineError(Exception):
    """Base class of what `submit` raises before a request is queued."""


class InvalidRequest(EngineError, ValueError):
    """The request cannot run on this model (HTTP 400); `param` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownAdapter(EngineError, KeyError):
    """No adapter of that name is loaded (HTTP 404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown adapter"


class EngineFull(EngineError):
    """The waiting queue is full (HTTP 429/503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStopped(EngineError):
    """The engine was closed."""


# --- requests and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded (temperature 0 = greedy)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0  # transformers' meaning (divides positive logits of seen tokens)
    presence_penalty: float = 0.0    # OpenAI's meaning, over the generated tokens
    frequency_penalty: float = 0.0
    ignore_eos: bool = False         # benchmarks: always generate max_tokens


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: str | None = None  # None = the base model
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Delta:
    """New output of one request. The last one has `finish_reason` and the token counts."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass
class Result:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Observer:
    """Callbacks from the engine thread (metrics); the default does nothing."""

    def first_token(self, model: str, seconds: float) -> None: ...
    def inter_token(self, model: str, seconds: float) -> None: ...
    def finished(self, model: str, reason: str, seconds: float, prompt_tokens: int,
                 completion_tokens: int) -> None: ...
    def load(self, running: int, waiting: int) -> None: ...


# --- output delivery ----------------------------------------------------------------------------


class _AsyncSink:
    """Hands deltas from the engine thread to an asyncio queue on the caller's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, delta: Delta) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
            return True
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False


def _deliver(items: list[tuple[asyncio.Queue, Delta]]) -> None:
    for target, delta in items:
        target.put_nowait(delta)


class _Outbox:
    """The deltas of one engine step, handed to each event loop in one call (one wake-up)."""

    def __init__(self) -> None:
        self.items: dict[asyncio.AbstractEventLoop, list[tuple[_Seq, Delta]]] = {}

    def add(self, seq: _Seq, delta: Delta) -> None:
        self.items.setdefault(seq.sink.loop, []).append((seq, delta))

    def flush(self) -> list[_Seq]:
        """Deliver everything; the requests nobody listens to any more (their loop closed)."""
        items, self.items, gone = self.items, {}, []
        for loop, pairs in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, [(s.sink.queue, d) for s, d in pairs])
            except RuntimeError:  # the loop is closed
                gone.extend(s for s, d in pairs if d.finish_reason is None)
        return gone


class _SyncSink:
    def __init__(self) -> None:
        self.queue: queue.Queue[Delta] = queue.Queue()

    def put(self, delta: Delta) -> bool:
        self.queue.put(delta)
        return True


class Stream:
    """The async iterator `submit` returns: deltas until (and including) the finishing one.

    A consumer that stops early must call `cancel()` (or `aclose()`): the request then leaves
    the batch at the next step.
    """

    def __init__(self, engine: Engine, request_id: str, sink: _AsyncSink) -> None:
        self.engine, self.request_id, self._sink, self._done = engine, request_id, sink, False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Delta:
        if self._done:
            raise StopAsyncIteration
        delta = await self._sink.queue.get()
        if delta.finish_reason is not None:
            self._done = True
        return delta

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self.engine.cancel(self.request_id)

    async def aclose(self) -> None:
        self.cancel()

    async def collect(self) -> Result:
        """Read to the end: the whole text and the counts."""
        return _collect([d async for d in self])


def _collect(deltas: list[Delta]) -> Result:
    last = deltas[-1]
    assert last.finish_reason is not None
    return Result(last.request_id, "".join(d.text for d in deltas),
                  [t for d in deltas for t in d.token_ids], last.finish_reason,
                  last.prompt_tokens, last.completion_tokens, last.error)


# --- per-request state (engine thread) ----------------------------------------------------------


class _Seq:
    """One request in the engine: its tokens, text, sampler and timing."""

    def __init__(self, request: Request, sink: _AsyncSink | _SyncSink, device: str,
                 model_name: str) -> None:
        self.request, self.sink = request, sink
        self.id, self.params = request.request_id, request.params
        self.adapter = request.adapter or BASE
        self.model_name = request.adapter or model_name
        self.prompt_len = len(request.prompt_ids)
        self.reserved = self.prompt_len + self.params.max_tokens  # longest this row can get
        self.generated: list[int] = []
        self.length = 0           # tokens of this row in the cache
        self.pending: int | None = None  # sampled, not yet fed to the model
        self.text = ""
        self.sent_chars = 0
        self.sent_tokens = 0
        self.finish: FinishReason | None = None
        self.submitted = time.perf_counter()
        self.last_token_at: float | None = None
        self.generator: torch.Generator | None = None
        if self.params.temperature > 0:
            self.generator = torch.Generator(device=device)
            seed = self.params.seed if self.params.seed is not None else random.getrandbits(63)
            self.generator.manual_seed(seed)
        # the distinct tokens seen so far (prompt + generated), for the repetition penalty
        self.seen: set[int] | None = None
        self.seen_ids: list[int] = []
        if self.params.repetition_penalty != 1.0:
            self.seen = set(request.prompt_ids)
            self.seen_ids = sorted(self.seen)

    def saw(self, token: int) -> None:
        if self.seen is not None and token not in self.seen:
            self.seen.add(token)
            self.seen_ids.append(token)


@functools.cache
def _slab_layer() -> type:
    """A transformers cache layer that reads and writes its batch's preallocated slab."""
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        def __init__(self, batch: _Batch, index: int) -> None:
            super().__init__()
            self.batch, self.index = batch, index
            self.dtype, self.device = batch.keys[index].dtype, batch.keys[index].device
            self.is_initialized = True

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            b, rows, q = self.batch, key_states.shape[0], key_states.shape[-2]
            keys, values = b.keys[self.index], b.values[self.index]
            keys[:rows, :, b.end:b.end + q] = key_states
            values[:rows, :, b.end:b.end + q] = value_states
            self.keys = keys[:rows, :, b.start:b.end + q]
            self.values = values[:rows, :, b.start:b.end + q]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.batch.end - self.batch.start

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return self.get_seq_length() + query_length, 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            raise NotImplementedError("rows leave through _Batch.drop")

    return SlabLayer


class _Batch:
    """Rows decoded together: one preallocated KV slab per layer, rows right-aligned in it.

    Row i of `rows` is row i of every slab ([row capacity, kv heads, columns, head dim]) and of
    `mask_buf`; every row's last token is at column `end - 1`, and `start` is the first column
    any row uses. A decode step writes column `end` of every slab in place. Joining rows go into
    free slab rows, left-padded to `end`; a leaving row is overwritten by the last row; columns
    that are padding in every row are skipped by moving `start`. The slabs are re-allocated (one
    copy) only when rows or columns run out; their size stays within the KV budget.
    """

    SLACK = 8  # spare columns at a re-allocation
    ROW_STEP = 8  # rows are allocated in multiples of this

    def __init__(self, key: str | None, max_rows: int, kv_budget: int) -> None:
        self.key = key  # the adapter of every row (grouped mode), or None (mixed)
        self.max_rows, self.kv_budget = max_rows, kv_budget
        self.rows: list[_Seq] = []
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.mask_buf: torch.Tensor | None = None
        self.start = self.end = 0
        self.cache: Any = None
        self.reallocations = 0

    @property
    def longest_reserved(self) -> int:
        return max((r.reserved for r in self.rows), default=0)

    @property
    def mask(self) -> torch.Tensor:
        """[rows, end - start]: 1 where a row has a token."""
        return self.mask_buf[:len(self.rows), self.start:self.end]

    @property
    def capacity(self) -> tuple[int, int]:
        return (0, 0) if self.mask_buf is None else tuple(self.mask_buf.shape)

    def _allocate(self, rows: int, width: int, like: tuple[torch.Tensor, ...],
                  joining: list[_Seq]) -> None:
        """New slabs for `rows` rows of `width` columns and room to grow; the rows there now
        are copied in, right-aligned at column `width`."""
        everyone = [*self.rows, *joining]
        grow = max(s.reserved - s.length for s in everyone)
        columns = max(width + 1, min(width + grow, max(s.reserved for s in everyone)))
        columns += self.SLACK
        spare = self.kv_budget // columns if columns else rows
        row_cap = max(rows, min(self.max_rows, -(-rows // self.ROW_STEP) * self.ROW_STEP, spare))
        old_width, n = self.end - self.start, len(self.rows)
        keys, values = _slabs(like, row_cap, columns)
        if n:
            for i in range(len(keys)):
                keys[i][:n, :, width - old_width:width] = self.keys[i][:n, :, self.start:self.end]
                values[i][:n, :, width - old_width:width] = self.values[i][:n, :, self.start:self.end]
        mask = torch.zeros((row_cap, columns), dtype=torch.long, device=like[0].device)
        if n:
            mask[:n, width - old_width:width] = self.mask
        self.keys, self.values, self.mask_buf = keys, values, mask
        self.start, self.end = width - old_width if n else width, width
        layer = _slab_layer()
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.cache.layers = [layer(self, i) for i in range(len(keys))]
        self.reallocations += 1

    def merge(self, cache: Any, mask: torch.Tensor, rows: list[_Seq]) -> None:
        """Add rows whose prefill produced `cache`/`mask` (right-aligned, [rows, columns])."""
        new_keys = [layer.keys for layer in _layers(cache)]
        new_values = [layer.values for layer in _layers(cache)]
        first = _first_used(mask)
        width = mask.shape[1] - first
        n, count = len(self.rows), len(rows)
        row_cap, columns = self.capacity
        if not (n and n + count <= row_cap and width <= self.end and self.end < columns):
            self._allocate(n + count, max(self.end - self.start if n else 0, width),
                           tuple(new_keys), rows)
        lo, hi, col = n, n + count, self.end - width
        for i in range(len(self.keys)):
            self.keys[i][lo:hi, :, col:self.end] = new_keys[i][..., first:, :]
            self.values[i][lo:hi, :, col:self.end] = new_values[i][..., first:, :]
        self.mask_buf[lo:hi] = 0
        self.mask_buf[lo:hi, col:self.end] = mask[:, first:]
        self.start = min(self.start, col)
        self.rows.extend(rows)

    def drop(self, indices: Iterable[int]) -> None:
        """Remove these rows (finished or cancelled): the last row takes each one's place."""
        for i in sorted(set(indices), reverse=True):
            last = len(self.rows) - 1
            if i != last:
                for buffers in (self.keys, self.values):
                    for slab in buffers:
                        slab[i] = slab[last]
                self.mask_buf[i] = self.mask_buf[last]
                self.rows[i] = self.rows[last]
            self.rows.pop()
        if not self.rows:
            self.keys, self.values, self.mask_buf, self.cache = [], [], None, None
            self.start = self.end = 0
            return
        self.start += _first_used(self.mask)

    def next_column(self) -> None:
        """Make room for one more token per row and mark it in the mask (before a decode)."""
        if self.end >= self.capacity[1]:
            self._allocate(len(self.rows), self.end - self.start, tuple(self.keys), [])
        self.mask_buf[:len(self.rows), self.end] = 1

    def advance(self) -> None:
        """After a decode: every row has one more token at column `end`."""
        self.end += 1


def _slabs(like: tuple[torch.Tensor, ...], rows: int,
           columns: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Zeroed key and value slabs ([rows, heads, columns, head dim]) shaped like `like`'s layers.

    Layers of one shape share one allocation (views of it): one block that large is mapped and
    unmapped whole by the allocator, where one block per layer stays in the heap, fragmented
    by the re-allocations of a server's life (which kept RSS hundreds of MiB higher)."""
    ref = like[0]
    if all(t.shape[1::2] == ref.shape[1::2] and t.dtype == ref.dtype for t in like):
        slab = ref.new_zeros((2, len(like), rows, ref.shape[1], columns, ref.shape[3]))
        return list(slab[0]), list(slab[1])
    keys = [t.new_zeros((rows, t.shape[1], columns, t.shape[3])) for t in like]
    return keys, [k.new_zeros(k.shape) for k in keys]


def _first_used(mask: torch.Tensor) -> int:
    """The first column of a [rows, columns] mask that is not padding in every row."""
    return int(mask.any(dim=0).to(torch.int8).argmax())


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best


def _cpu_weight_layout(model: Any, transposed: bool = True) -> int:
    """Store each linear layer's weight transposed (column-major, same values) on a CPU, or
    back in torch's natural row-major layout with `transposed=False`.

    `F.linear` then multiplies by a row-major weight^T, which torch's CPU GEMM handles faster
    for a few rows on some CPUs and slower on others (bentos/README.md): `choose_layout` times
    both where the engine runs. The values move within the weight's own storage, so no second
    copy stays behind. Tied weights (the embeddings and the LM head) are one parameter:
    converted once. Small matrices (LoRA factors) are left as they are. Returns how many
    weights were converted.
    """
    converted, seen = 0, set()
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight
        if (id(weight) in seen or weight.device.type != "cpu" or weight.dim() != 2
                or not weight.is_floating_point()):  # int8 weights keep the kernel's layout
            continue
        seen.add(id(weight))
        rows, cols = weight.shape
        is_transposed = weight.stride() == (1, rows)
        if min(rows, cols) < 64 or is_transposed == transposed:
            continue
        data = weight.data
        if transposed and data.is_contiguous():  # in place: no second copy of the weights
            flat = data.view(-1)
            flat.copy_(data.t().contiguous().view(-1))
            weight.data = flat.view(cols, rows).t()
        elif not transposed and data.t().is_contiguous():
            flat = data.t().view(-1)
            flat.copy_(data.contiguous().view(-1))
            weight.data = flat.view(rows, cols)
        else:
            weight.data = data.t().contiguous().t() if transposed else data.contiguous()
        converted += 1
    return converted


class _Prefill:
    """Prompts admitted together, left-padded into one [rows, width] matrix, prefilled in one or
    more passes of at most `chunk` columns (a long prompt spreads over several steps)."""

    def __init__(self, key: str | None, seqs: list[_Seq], pad_id: int, device: str,
                 max_tokens: int) -> None:
        from transformers import DynamicCache

        self.key, self.seqs = key, seqs
        width = max(s.prompt_len for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, width - seq.prompt_len:] = torch.tensor(seq.request.prompt_ids)
            mask[i, width - seq.prompt_len:] = 1
        self.ids, self.mask = ids.to(device), mask.to(device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        self.done = _first_used(self.mask)  # columns already in the cache (leading padding)
        self.chunk = max(1, max_tokens // len(seqs))

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def next_slice(self) -> slice:
        return slice(self.done, min(self.width, self.done + self.chunk))

    def remove(self, keep: list[int]) -> None:
        """Keep only these rows (the others were cancelled)."""
        index = torch.tensor(keep, device=self.ids.device)
        self.seqs = [self.seqs[i] for i in keep]
        self.ids, self.mask, self.positions = self.ids[index], self.mask[index], \
            self.positions[index]
        if self.done and self.cache.get_seq_length():
            self.cache.batch_select_indices(index)


# --- the engine ---------------------------------------------------------------------------------


class Engine:
    """Continuous batching over `model` (a causal LM, or a peft model with LoRA adapters).

    Args:
        model: a transformers causal LM (or a `PeftModel` around one), in eval mode. The engine
            owns it from here: it moves it, may re-lay its weights out (`cpu_weight_layout`) and
            merges adapters into it.
        tokenizer: its tokenizer (decoding and the end-of-sequence ids).
        adapters: LoRA adapters to load, name -> folder (more later with `add_adapter`).
        kv_budget_tokens: most KV-cache tokens (rows x padded length) the running batch may hold.
        max_batch: most requests decoded together.
        max_queue: most requests waiting for a place; beyond it `submit` raises `EngineFull`.
        device, dtype: where and in which precision to run (the model is moved there).
        threads: torch intra-op threads for the engine thread (None: leave torch's setting).
        max_model_len: the context length (default: the config's `max_position_embeddings`).
        max_prefill_tokens: most padded prompt tokens prefilled in one forward pass (a longer
            prompt is prefilled in chunks of that size, one per step).
        adapter_mode: "mixed" (one forward for any mix of adapters) or "grouped".
        merge_adapters: run a batch of one adapter with it merged into the base weights (never
            into int8 weights: adapters then run unmerged).
        cpu_weight_layout: store linear weights transposed for the CPU GEMM (None: on a CPU in
            float32).
        observer: metric callbacks.
        model_name: the base model's name (for the observer and `stats`).
    """

    def __init__(self, model: Any, tokenizer: Any, adapters: dict[str, str] | None = None, *,
                 kv_budget_tokens: int = 8192, max_batch: int = 32, max_queue: int = 64,
                 device: str | None = None, dtype: torch.dtype | None = None,
                 threads: int | None = None, max_model_len: int | None = None,
                 eos_token_ids: Iterable[int] | None = None, max_prefill_tokens: int = 2048,
                 adapter_mode: Literal["mixed", "grouped"] = "mixed",
                 merge_adapters: bool = True, cpu_weight_layout: bool | None = None,
                 observer: Observer | None = None, model_name: str = "model") -> None:
        if adapter_mode not in ("mixed", "grouped"):
            raise ValueError(f"adapter_mode must be mixed or grouped (got {adapter_mode!r})")
        self.device = str(device or next(model.parameters()).device)
        self.dtype = dtype
        model = model.to(device=self.device, dtype=dtype) if dtype else model.to(self.device)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.kv_budget = kv_budget_tokens
        self.max_batch, self.max_queue = max_batch, max_queue
        self.max_prefill_tokens = max_prefill_tokens
        self.adapter_mode = adapter_mode
        self.int8 = is_int8(model)
        self.merge_adapters = merge_adapters and not self.int8
        if cpu_weight_layout is None:
            weight = next(model.parameters())
            cpu_weight_layout = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.cpu_weight_layout = cpu_weight_layout
        self.threads = threads
        self.observer = observer or Observer()
        self.model_name = model_name
        config = getattr(self._base_model(), "config", None)
        self.max_model_len = (max_model_len or getattr(config, "max_position_embeddings", None)
                              or 2048)
        self.eos_ids = set(eos_token_ids) if eos_token_ids is not None else _eos_ids(model,
                                                                                   tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            min(self.eos_ids) if self.eos_ids else 0)
        self.adapters: dict[str, str] = {}
        self._active: str | None = None  # the adapter set with set_adapter (peft)
        self._merged: str | None = None  # the adapter merged into the base weights
        self._undo: dict[str, MergeUndo] = {}  # per adapter: restores the base after unmerge
        self._adapters_enabled: bool | None = None  # peft's adapter layers on (None: unknown)
        self._cv = threading.Condition()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._cancelled: set[str] = set()
        self._commands: list[Callable[[], None]] = []
        self._batches: dict[str | None, _Batch] = {}
        self._prefills: list[_Prefill] = []   # engine thread only
        self._running_ids: set[str] = set()
        self._prefilling: list[_Seq] = []     # admitted, not in a batch yet (under _cv)
        self._outbox = _Outbox()
        self._stopped = False
        self._counters = collections.Counter()
        if self.cpu_weight_layout:
            self._counters["weights_transposed"] = _cpu_weight_layout(self.model)
        for name, path in (adapters or {}).items():
            self._load_adapter(name, path)
        self._thread = threading.Thread(target=self._run, name="tuneship-engine", daemon=True)
        self._thread.start()

    # -- public API (any thread) --

    def submit(self, request: Request) -> Stream:
        """Queue a request; its deltas arrive on the calling event loop (call inside one)."""
        sink = _AsyncSink(asyncio.get_running_loop())
        self._enqueue([(request, sink)])
        return Stream(self, request.request_id, sink)

    def submit_many(self, requests: list[Request]) -> list[Stream]:
        """Queue several requests at once (all or none: e.g. OpenAI's `n`)."""
        loop = asyncio.get_running_loop()
        pairs = [(r, _AsyncSink(loop)) for r in requests]
        self._enqueue(pairs)
        return [Stream(self, r.request_id, s) for r, s in pairs]

    def generate(self, request: Request, timeout: float | None = None) -> Result:
        """Run a request to the end, blocking the calling thread (not the event loop)."""
        sink = _SyncSink()
        self._enqueue([(request, sink)])
        deltas = []
        try:
            while not deltas or deltas[-1].finish_reason is None:
                deltas.append(sink.queue.get(timeout=timeout))
        except queue.Empty:
            self.cancel(request.request_id)
            raise TimeoutError(f"request {request.request_id} unfinished after {timeout} s") from None
        return _collect(deltas)

    def cancel(self, request_id: str) -> None:
        """Stop a request: a waiting one is dropped now, a running one leaves at the next step."""
        with self._cv:
            for seq in self._waiting:
                if seq.id == request_id:
                    self._waiting.remove(seq)
                    self._finish_now(seq, "cancelled")
                    return
            if request_id in self._running_ids:
                self._cancelled.add(request_id)
                self._cv.notify()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {"running": self._running_count(), "waiting": len(self._waiting),
                    "kv_tokens_bound": self._kv_bound(), "kv_budget_tokens": self.kv_budget,
                    "max_batch": self.max_batch, "max_queue": self.max_queue,
                    "max_model_len": self.max_model_len, "adapters": sorted(self.adapters),
                    "adapter_mode": self.adapter_mode, "merged_adapter": self._merged,
                    "dtype": self.weight_dtype, **self._counters}

    @property
    def weight_dtype(self) -> str:
        """The precision of the base model's weights ("float32", "bfloat16", "int8", ...)."""
        if self.int8:
            return "int8"
        return str(self.dtype or next(self.model.parameters()).dtype).removeprefix("torch.")

    def add_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter (between two steps); requests may name it as soon as this returns."""
        self._call(lambda: self._load_adapter(name, path))

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter no request is using (InvalidRequest while one is)."""
        def remove() -> None:
            if name not in self.adapters:
                raise UnknownAdapter(f"no adapter named {name!r}")
            busy = [s for b in self._batches.values() for s in b.rows if s.adapter == name]
            busy += [s for p in self._prefills for s in p.seqs if s.adapter == name]
            if busy or any(s.adapter == name for s in self._waiting):
                raise InvalidRequest(f"adapter {name!r} is in use by running or waiting requests")
            self._unmerge()
            self.model.delete_adapter(name)
            del self.adapters[name]
            self._undo.clear()
            self._active = self._adapters_enabled = None
        self._call(remove)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the loop; requests still in it finish with reason "cancelled"."""
        with self._cv:
            self._stopped = True
            self._cv.notify()
        self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- admission --

    def check(self, request: Request) -> None:
        """Raise InvalidRequest/UnknownAdapter if the request can never run here."""
        params, n = request.params, len(request.prompt_ids)
        if n == 0:
            raise InvalidRequest("the prompt is empty (0 tokens)", "prompt")
        if params.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1 (got {params.max_tokens})",
                                 "max_tokens")
        if request.adapter is not None and request.adapter not in self.adapters:
            raise UnknownAdapter(f"no adapter named {request.adapter!r} (loaded: "
                                 f"{', '.join(sorted(self.adapters)) or 'none'})")
        if n + params.max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"the prompt is {n} tokens and max_tokens is {params.max_tokens}: {n} + "
                f"{params.max_tokens} = {n + params.max_tokens} exceeds the model's context of "
                f"{self.max_model_len} tokens; shorten the prompt or ask for fewer tokens",
                "max_tokens")
        if n + params.max_tokens > self.kv_budget:
            raise InvalidRequest(
                f"the prompt ({n} tokens) plus max_tokens ({params.max_tokens}) needs "
                f"{n + params.max_tokens} KV-cache tokens; this server holds at most "
                f"{self.kv_budget}", "max_tokens")

    def _enqueue(self, pairs: list[tuple[Request, Any]]) -> None:
        for request, _ in pairs:
            self.check(request)
        with self._cv:
            if self._stopped:
                raise EngineStopped("the engine is closed")
            seqs = [_Seq(request, sink, self.device, self.model_name) for request, sink in pairs]
            # Those the next step will admit (free rows and KV budget) do not count as waiting.
            queued = [*self._waiting, *seqs]
            if len(queued) - self._fitting(queued) > self.max_queue:
                raise EngineFull(f"busy: {len(self._waiting)} requests waiting (limit "
                                 f"{self.max_queue}) behind {self._running_count()} running; "
                                 f"retry later")
            self._waiting.extend(seqs)
            self._counters["submitted"] += len(pairs)
            self._cv.notify()
        self._report_load()

    def _running_count(self) -> int:
        """Admitted and not finished (in a batch, or in its prefill)."""
        return len(self._running_ids)

    def _kv_bound(self) -> int:
        """The most KV tokens the running batches can reach (rows x longest possible row)."""
        return sum(len(b.rows) * b.longest_reserved for b in list(self._batches.values()))

    def _batch_key(self, seq: _Seq) -> str | None:
        return seq.adapter if self.adapter_mode == "grouped" else None

    def _plan(self, queued: list[_Seq], prefill_limit: bool) -> int:
        """How many of `queued` (in order) fit now: rows, KV budget (and prefill size)."""
        batches = list(self._batches.items())
        rows = self._running_count()
        longest = {k: b.longest_reserved for k, b in batches}
        counts = {k: len(b.rows) for k, b in batches}
        for seq in self._prefilling:  # admitted, not merged yet
            key = self._batch_key(seq)
            longest[key] = max(longest.get(key, 0), seq.reserved)
            counts[key] = counts.get(key, 0) + 1
        longest_prompt, taken = 0, 0
        for seq in queued:
            if rows + taken >= self.max_batch:
                break
            key = self._batch_key(seq)
            trial_longest = {**longest, key: max(longest.get(key, 0), seq.reserved)}
            trial_counts = {**counts, key: counts.get(key, 0) + 1}
            if sum(trial_counts[k] * trial_longest[k] for k in trial_counts) > self.kv_budget:
                break  # first come, first served: the head waits for room
            prompt = max(longest_prompt, seq.prompt_len)
            if prefill_limit and taken and prompt * (taken + 1) > self.max_prefill_tokens:
                break  # the rest are prefilled at the next step
            longest, counts, longest_prompt = trial_longest, trial_counts, prompt
            taken += 1
        return taken

    def _fitting(self, queued: list[_Seq]) -> int:
        return self._plan(queued, prefill_limit=False)

    def _admit(self) -> list[_Seq]:
        """Move waiting requests into the batch while rows, KV budget and prefill size allow."""
        with self._cv:
            admitted = [self._waiting.popleft()
                        for _ in range(self._plan(list(self._waiting), prefill_limit=True))]
            self._running_ids.update(seq.id for seq in admitted)
            self._prefilling.extend(admitted)
        return admitted

    def _prefilled(self) -> None:
        """Recompute who is admitted but not in a batch (after prefill passes)."""
        with self._cv:
            self._prefilling = [s for p in self._prefills for s in p.seqs]

    # -- the loop (engine thread) --

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # per thread for OpenMP: set it here
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._stopped or self._waiting or self._batches or self._prefills
                               or self._commands or self._cancelled):
                        self._cv.wait()
                    if self._stopped:
                        break
                    commands, self._commands = self._commands, []
                    cancelled, self._cancelled = self._cancelled, set()
                for command in commands:
                    command()
                try:
                    self._drop(cancelled)
                    admitted = self._admit()
                    if admitted:
                        groups: dict[str | None, list[_Seq]] = collections.defaultdict(list)
                        for seq in admitted:
                            groups[self._batch_key(seq)].append(seq)
                        self._prefills += [
                            _Prefill(key, group, self.pad_id, self.device,
                                     self.max_prefill_tokens) for key, group in groups.items()]
                    for prefill in list(self._prefills):
                        if self._prefill_pass(prefill):
                            self._prefills.remove(prefill)
                    self._prefilled()
                    for batch in list(self._batches.values()):
                        self._decode(batch)
                except Exception as err:  # a failed forward: fail what runs, keep serving
                    log.exception("engine step failed")
                    self._fail_all(f"{type(err).__name__}: {err}")
                self._flush()
                self._report_load()
        self._shutdown()

    def _flush(self) -> None:
        for seq in self._outbox.flush():  # nobody listens any more
            self.cancel(seq.id)

    def _call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the engine thread between two steps and wait for it (errors re-raised)."""
        if threading.current_thread() is self._thread:
            fn()
            return
        done, errors = threading.Event(), []

        def command() -> None:
            try:
                fn()
            except Exception as err:
                errors.append(err)
            finally:
                done.set()

        with self._cv:
            if self._stopped:
                raise EngineStopped("the engine is closed")
            self._commands.append(command)
            self._cv.notify()
        done.wait()
        if errors:
            raise errors[0]

    def _drop(self, cancelled: set[str]) -> None:
        if not cancelled:
            return
        for key, batch in list(self._batches.items()):
            gone = [i for i, seq in enumerate(batch.rows) if seq.id in cancelled]
            for i in gone:
                self._finish_now(batch.rows[i], "cancelled")
            if gone:
                batch.drop(gone)
            if not batch.rows:
                del self._batches[key]
        for prefill in list(self._prefills):
            keep = [i for i, seq in enumerate(prefill.seqs) if seq.id not in cancelled]
            if len(keep) == len(prefill.seqs):
                continue
            for seq in prefill.seqs:
                if seq.id in cancelled:
                    self._finish_now(seq, "cancelled")
            if keep:
                prefill.remove(keep)
            else:
                self._prefills.remove(prefill)
        self._prefilled()

    def _prefill_pass(self, prefill: _Prefill) -> bool:
        """Prefill the next chunk of these prompts; at the last one, sample their first tokens
        and move them into the batch. True when done."""
        seqs, cols = prefill.seqs, prefill.next_slice()
        logits = self._forward(prefill.ids[:, cols], prefill.mask[:, :cols.stop],
                               prefill.positions[:, cols], prefill.cache,
                               [s.adapter for s in seqs])
        self._counters["prefill_passes"] += 1
        for layer in _layers(prefill.cache):
            if type(layer).__name__ != "DynamicLayer":
                raise NotImplementedError(f"the engine supports full-attention caches only "
                                          f"(got {type(layer).__name__})")
        prefill.done = cols.stop
        if prefill.done < prefill.width:
            return False
        cache, mask = prefill.cache, prefill.mask
        for seq in seqs:
            seq.length = seq.prompt_len
        tokens = self._sample(logits, seqs)
        now = time.perf_counter()
        keep = []
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            self.observer.first_token(seq.model_name, now - seq.submitted)
            seq.last_token_at = now
            if not self._advance(seq, token):
                keep.append(i)
        if not keep:
            return True
        if len(keep) < len(seqs):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask = mask[index]
        batch = self._batches.get(prefill.key)
        if batch is None:
            batch = self._batches[prefill.key] = _Batch(prefill.key, self.max_batch,
                                                        self.kv_budget)
        reallocations = batch.reallocations
        batch.merge(cache, mask, [seqs[i] for i in keep])
        self._counters["kv_reallocations"] += batch.reallocations - reallocations
        return True

    def _decode(self, batch: _Batch) -> None:
        """One decode step for every row of the batch."""
        rows = batch.rows
        reallocations = batch.reallocations
        batch.next_column()
        self._counters["kv_reallocations"] += batch.reallocations - reallocations
        ids = torch.tensor([[s.pending] for s in rows], device=self.device)
        positions = torch.tensor([[s.length] for s in rows], device=self.device)
        mask = batch.mask_buf[:len(rows), batch.start:batch.end + 1]
        logits = self._forward(ids, mask, positions, batch.cache, [s.adapter for s in rows])
        batch.advance()
        self._counters["decode_steps"] += 1
        self._counters["decoded_tokens"] += len(rows)
        self._counters["peak_batch"] = max(self._counters["peak_batch"], len(rows))
        for seq in rows:
            seq.length += 1
        tokens = self._sample(logits, rows)
        now = time.perf_counter()
        done = []
        for i, (seq, token) in enumerate(zip(rows, tokens, strict=True)):
            self.observer.inter_token(seq.model_name, now - (seq.last_token_at or now))
            seq.last_token_at = now
            if self._advance(seq, token):
                done.append(i)
        if done:
            batch.drop(done)
        if not batch.rows:
            del self._batches[batch.key]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any, adapters: list[str]) -> torch.Tensor:
        """Logits of the last position of each row ([rows, vocab], float32)."""
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                  "position_ids": positions, "past_key_values": cache,
                                  "use_cache": True, "logits_to_keep": 1}
        with self._adapters_for(adapters, kwargs):
            out = self.model(**kwargs)
        return out.logits[:, -1, :].float()

    @contextlib.contextmanager
    def _adapters_for(self, adapters: list[str], kwargs: dict[str, Any]):
        """Select the rows' adapters: one for all rows (merged, or set/disable), or per row.

        peft's state is changed only when it differs from what the batch needs (its
        `disable_adapter()` context costs more per forward than a decode step of a small model).
        """
        if not self.adapters:
            yield
            return
        distinct = set(adapters)
        if len(distinct) > 1:
            self._unmerge()
            self._enable_adapters(True)
            kwargs["adapter_names"] = adapters
            yield
            return
        (only,) = distinct
        if only == BASE:
            self._unmerge()
            self._enable_adapters(False)
            yield
            return
        self._enable_adapters(True)
        if self.merge_adapters and self._only_adapter_in_use(only) and self._merge(only):
            yield
            return
        self._unmerge()
        self._activate(only)
        yield

    def _activate(self, name: str) -> None:
        """Make `name` peft's active adapter (unmerged: peft unmerges on `set_adapter` itself).

        Merged too: a layer the merged adapter does not target still adds its active adapter's
        LoRA, so another adapter left active there would leak into the merged one's answers.
        """
        if self._active != name:
            self.model.set_adapter(name, inference_mode=True)
            self._active = name

    def _only_adapter_in_use(self, name: str) -> bool:
        """Whether every running or prefilling row uses adapter `name` (merging it then lasts:
        a prefill of one adapter joining rows of another, or groups of different adapters in
        grouped mode, run unmerged instead of merging back and forth)."""
        rows = [s for b in self._batches.values() for s in b.rows]
        rows += [s for p in self._prefills for s in p.seqs]
        return all(s.adapter == name for s in rows)

    def _enable_adapters(self, enabled: bool) -> None:
        if self._adapters_enabled is not enabled:
            tuner = self.model.base_model
            tuner.enable_adapter_layers() if enabled else tuner.disable_adapter_layers()
            self._adapters_enabled = enabled

    def _merge(self, name: str) -> bool:
        """Merge adapter `name` into the base weights (unmerging another first); False if peft
        cannot merge it (the batch then runs it unmerged)."""
        if self._merged == name:
            return True
        self._unmerge()
        self._activate(name)
        undo = self._undo.get(name)
        if undo is None:  # once per adapter: the base weights always come back the same
            undo = self._undo[name] = record(self.model, name)
            self._counters["merge_undo_bytes"] = sum(u.nbytes for u in self._undo.values())
        try:
            self.model.base_model.merge_adapter(adapter_names=[name])
        except Exception as err:  # e.g. a layer type peft cannot merge
            log.warning("adapter %s cannot be merged (%s): serving it unmerged", name, err)
            with contextlib.suppress(Exception):
                self.model.base_model.unmerge_adapter()
            undo.restore()
            self.merge_adapters = False
            return False
        self._merged = name
        self._counters["adapter_merges"] += 1
        return True

    def _unmerge(self) -> None:
        """Unmerge the merged adapter and put back the base weights bit for bit (merge_undo)."""
        if self._merged is not None:
            self.model.base_model.unmerge_adapter()
            self._undo[self._merged].restore()
            self._merged = None

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[int]:
        """The next token of each row: penalties, then greedy or temperature + top_p."""
        penalised: dict[float, list[int]] = collections.defaultdict(list)
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.repetition_penalty != 1.0:
                penalised[p.repetition_penalty].append(i)
            if (p.presence_penalty or p.frequency_penalty) and seq.generated:
                counts = torch.bincount(torch.tensor(seq.generated, device=logits.device),
                                        minlength=logits.shape[1]).to(logits.dtype)
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
        for penalty, rows in penalised.items():  # all rows of one penalty in one gather/scatter
            seen = [seqs[i].seen_ids for i in rows]
            width = max(len(s) for s in seen)
            index = torch.tensor([s + s[:1] * (width - len(s)) for s in seen],
                                 device=logits.device)  # padded with a repeat: same value
            row_index = torch.tensor(rows, device=logits.device)[:, None]
            values = logits[row_index, index]
            logits[row_index, index] = torch.where(values > 0, values / penalty,
                                                   values * penalty)
        tokens = logits.argmax(dim=-1).tolist()
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.temperature <= 0:
                continue
            probs = torch.softmax(logits[i] / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = sorted_probs.cumsum(0) - sorted_probs > p.top_p  # keeps the first
                sorted_probs[outside] = 0.0
                choice = torch.multinomial(sorted_probs, 1, generator=seq.generator)
                tokens[i] = int(order[choice])
            else:
                tokens[i] = int(torch.multinomial(probs, 1, generator=seq.generator))
        return tokens

    def _advance(self, seq: _Seq, token: int) -> bool:
        """Record a sampled token, emit the text that is safe to send; True if it finished."""
        seq.generated.append(token)
        seq.saw(token)
        seq.pending = token
        p = seq.params
        reason: FinishReason | None = None
        if token in self.eos_ids and not p.ignore_eos:
            reason = "stop"
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        if p.stop:
            start = max(0, len(seq.text) - max(len(s) for s in p.stop) + 1)
            found = [i for s in p.stop if (i := text.find(s, start)) >= 0]
            if found:
                text, reason = text[:min(found)], "stop"
        if reason is None and (len(seq.generated) >= p.max_tokens
                               or seq.prompt_len + len(seq.generated) >= self.max_model_len):
            reason = "length"
        seq.text = text
        if reason is not None:
            self._emit(seq, text[seq.sent_chars:], reason)
            return True
        safe = len(text) - _held_back(text, p.stop)
        while safe > seq.sent_chars and text[safe - 1] == "\ufffd":  # an unfinished character
            safe -= 1
        if safe > seq.sent_chars:
            self._emit(seq, text[seq.sent_chars:safe], None)
        return False

    def _emit(self, seq: _Seq, text: str, reason: FinishReason | None,
              error: str | None = None) -> None:
        tokens = seq.generated[seq.sent_tokens:]
        seq.sent_chars += len(text)
        seq.sent_tokens = len(seq.generated)
        delta = Delta(seq.id, text, tokens, reason)
        if reason is not None:
            seq.finish = reason
            delta.prompt_tokens, delta.completion_tokens = seq.prompt_len, len(seq.generated)
            delta.error = error
            with self._cv:
                self._running_ids.discard(seq.id)
            self._counters[f"finished_{reason}"] += 1
            self.observer.finished(seq.model_name, reason, time.perf_counter() - seq.submitted,
                                   seq.prompt_len, len(seq.generated))
        if isinstance(seq.sink, _AsyncSink) and threading.current_thread() is self._thread:
            self._outbox.add(seq, delta)  # delivered at the end of the step
        elif not seq.sink.put(delta) and reason is None:
            self.cancel(seq.id)  # nobody listens any more

    def _finish_now(self, seq: _Seq, reason: FinishReason, error: str | None = None) -> None:
        """Finish a request outside of sampling (cancelled, failed, shut down)."""
        if seq.finish is None:
            self._emit(seq, "", reason, error)

    def _fail_all(self, error: str) -> None:
        rows = [seq for batch in self._batches.values() for seq in batch.rows]
        rows += [seq for prefill in self._prefills for seq in prefill.seqs]
        with self._cv:
            rows += self._prefilling  # admitted this step, before their prefill existed
        for seq in rows:
            self._finish_now(seq, "error", error)
        self._batches.clear()
        self._prefills.clear()
        self._prefilled()
        self._counters["failed_steps"] += 1

    def _shutdown(self) -> None:
        for batch in self._batches.values():
            for seq in batch.rows:
                self._finish_now(seq, "cancelled")
        for prefill in self._prefills:
            for seq in prefill.seqs:
                self._finish_now(seq, "cancelled")
        self._batches.clear()
        self._prefills.clear()
        with self._cv:
            waiting, self._waiting = list(self._waiting), collections.deque()
            for command in self._commands:  # wake callers of add_adapter
                with contextlib.suppress(Exception):
                    command()
            self._commands = []
        for seq in waiting:
            self._finish_now(seq, "cancelled")
        self._flush()

    def _report_load(self) -> None:
        with self._cv:
            running, waiting = self._running_count(), len(self._waiting)
        self.observer.load(running, waiting)

    # -- adapters --

    def _base_model(self) -> Any:
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _load_adapter(self, name: str, path: str) -> None:
        if not name or name == BASE:
            raise InvalidRequest(f"invalid adapter name {name!r}", "name")
        if name in self.adapters:
            raise InvalidRequest(f"an adapter named {name!r} is already loaded", "name")
        from peft import PeftModel

        self._unmerge()
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name,
                                                   is_trainable=False)
        moved = self.model.to(device=self.device, dtype=self.dtype) if self.dtype else \
            self.model.to(self.device)
        self.model = moved.eval()
        if self.cpu_weight_layout:
            self._counters["weights_transposed"] += _cpu_weight_layout(self.model)
        self.adapters[name] = str(path)
        self._undo.clear()  # layers were moved and laid out again: records are rebuilt
        self._active = None
        self._adapters_enabled = None  # new adapter layers start enabled: set it again
        log.info("adapter %s loaded from %s", name, path)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, list) else [eos])
    if not ids and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


# --- the weights' precision, chosen where the engine runs ---------------------------------------

DTYPES = ("float32", "bfloat16", "int8")  # int8: weight-only (int8_weights), float activations
AUTO = "auto"
MIN_GAIN = 1.1  # a candidate's geometric-mean decode speed-up over float32 needed under auto
TIMED_ROWS = (1, 16)


@dataclass
class DtypeChoice:
    """The dtype served, why, the decode-step timings behind it and the parity verdicts."""

    dtype: str
    chosen_by: Literal["config", "device", "manifest", "timing"]
    reason: str
    timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    verdicts: dict[str, bool] | None = None
    weight_layout: str | None = None  # float32 on a CPU: "natural" or "transposed" (timed)
    layout_timings_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def engine_dtype(self) -> torch.dtype | None:
        """The `dtype` to give the Engine (None for int8: its activations stay float32)."""
        return None if self.dtype == "int8" else getattr(torch, self.dtype)

    def card(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "chosen_by": self.chosen_by, "reason": self.reason,
                "decode_step_ms": self.timings_ms, "parity_passed": self.verdicts,
                "weight_layout": self.weight_layout,
                "weight_layout_decode_step_ms": self.layout_timings_ms}


def manifest_verdicts(folders: Iterable[Any]) -> dict[str, bool] | None:
    """dtype -> parity passed, for the torch runtimes of the first `<folder>/runtimes/
    manifest.json` found (the optimize stage's record); None where no folder has one."""
    for folder in folders:
        path = Path(folder) / "runtimes" / "manifest.json"
        if path.is_file():
            entries = json.loads(path.read_text()).get("runtimes", [])
            return {str(e["dtype"]): bool(e.get("passed")) for e in entries
                    if e.get("kind") == "torch" and "dtype" in e}
    return None


@torch.inference_mode()
def decode_step_ms(model: Any, rows: int, context: int = 32, steps: int = 4) -> float:
    """Median milliseconds of one decode step of `rows` rows after a `context`-token prefill."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.arange(rows * context, device=device).remainder(vocab).view(rows, context)
    cache = DynamicCache()
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    times = []
    for _ in range(steps):
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def time_dtypes(models: dict[str, Any], rounds: int = 3) -> dict[str, dict[str, float]]:
    """Median decode-step ms per model and row count, rounds interleaved (a busy spell on a
    shared machine falls on all of them)."""
    return _interleaved({name: (lambda m=model: m) for name, model in models.items()}, rounds)


def _interleaved(variants: dict[str, Callable[[], Any]],
                 rounds: int) -> dict[str, dict[str, float]]:
    """Median decode-step ms per variant and TIMED_ROWS count; each variant's callable readies
    and returns its model before each of its turns, turns interleaved over `rounds`."""
    samples: dict[str, dict[str, list[float]]] = {n: {f"rows_{r}": [] for r in TIMED_ROWS}
                                                  for n in variants}
    for round_ in range(rounds):
        for name, ready in variants.items():
            model = ready()
            if round_ == 0:
                decode_step_ms(model, 1, steps=1)  # warm-up
            for rows in TIMED_ROWS:
                samples[name][f"rows_{rows}"].append(decode_step_ms(model, rows))
    return {n: {k: round(sorted(v)[len(v) // 2], 3) for k, v in by.items()}
            for n, by in samples.items()}


def speedups(timings: dict[str, dict[str, float]], name: str,
             reference: str = "float32") -> dict[str, float]:
    """Speed-up of `name` over `reference` per timed row count."""
    return {k: timings[reference][k] / timings[name][k] for k in timings[reference]}


def faster_everywhere(ratios: dict[str, float]) -> bool:
    """No row count slower, and the geometric mean at least MIN_GAIN."""
    return min(ratios.values()) >= 1.0 and _geometric_mean(ratios) >= MIN_GAIN


def _geometric_mean(ratios: dict[str, float]) -> float:
    return float(torch.tensor(list(ratios.values())).log().mean().exp())


def choose_layout(model: Any, rounds: int = 3) -> tuple[str, dict[str, dict[str, float]]]:
    """Leave a float32 CPU `model` in the weight layout that decodes faster here (the geometric
    mean over TIMED_ROWS), timed in interleaved rounds, the weights flipped in place between."""
    def laid_out(transposed: bool) -> Callable[[], Any]:
        return lambda: (_cpu_weight_layout(model, transposed), model)[1]

    timings = _interleaved({"natural": laid_out(False), "transposed": laid_out(True)}, rounds)
    gain = _geometric_mean(speedups(timings, "transposed", reference="natural"))
    chosen = "transposed" if gain > 1.0 else "natural"
    _cpu_weight_layout(model, chosen == "transposed")
    return chosen, timings


def choose_dtype(model: Any, requested: str, device: str,
                 verdicts: dict[str, bool] | None = None,
                 adapters: bool = False) -> tuple[Any, DtypeChoice]:
    """`model` (float32) in the dtype to serve, and why.

    A pinned dtype (`requested` in DTYPES) is served even if its parity failed (logged).
    `auto`: the candidates are bfloat16 (unless a manifest exists and did not pass it) and int8
    (only where a manifest passed it: a quantization is served only with its perplexity
    checked, and only when no adapter is served: `adapters` True means LoRA adapters will run
    on this model, and over int8 weights they cannot be merged). On a GPU bfloat16 if it is a
    candidate; on a CPU each candidate's decode steps are timed against float32's, and the
    fastest that is no slower at any timed batch size and MIN_GAIN faster on the geometric mean
    is served, else float32.
    """
    if requested != AUTO and requested not in DTYPES:
        raise ValueError(f"llm_dtype must be auto or one of {', '.join(DTYPES)} (got "
                         f"{requested!r})")
    if requested != AUTO:
        return _pinned(model, requested, device, verdicts)
    candidates = [d for d in ("bfloat16", "int8")
                  if (verdicts.get(d, False) if verdicts is not None else d == "bfloat16")]
    left_out = ""
    if adapters and "int8" in candidates:
        candidates.remove("int8")
        left_out = ("; int8 passed but is left out: adapters are served, and over int8 weights "
                    "their LoRA runs unmerged (pin llm_dtype: int8 to serve it anyway)")
    if device != "cpu" and "bfloat16" in candidates:
        return _cast(model, "bfloat16"), DtypeChoice("bfloat16", "device",
                                                     f"bfloat16 on {device}", verdicts=verdicts)
    layout, layouts = choose_layout(model) if device == "cpu" else (None, {})
    if device != "cpu" or not candidates:
        why = ("bfloat16 has no passed parity in the model's runtimes/manifest.json (int8 is a "
               "CPU candidate)" if device != "cpu" else
               "bfloat16 has no passed parity in the model's runtimes/manifest.json" if left_out
               else "neither bfloat16 nor int8 has a passed parity in the model's "
               "runtimes/manifest.json")
        return model, DtypeChoice("float32", "manifest", why + left_out, verdicts=verdicts,
                                  weight_layout=layout, layout_timings_ms=layouts)
    built = {d: _cast(copy.deepcopy(model), d) for d in candidates}
    timings = time_dtypes({"float32": model, **built})  # float32 as the engine would serve it
    ratios = {d: speedups(timings, d) for d in candidates}
    winners = [d for d in candidates if faster_everywhere(ratios[d])]
    chosen = max(winners, key=lambda d: _geometric_mean(ratios[d]), default="float32")
    reason = "; ".join(f"{d} decode speed-up over float32 here: "
                       f"{', '.join(f'{k} {v:.2f}x' for k, v in ratios[d].items())}"
                       for d in candidates)
    reason += f" (needs >= 1 at each and a geometric mean >= {MIN_GAIN}x; the fastest wins)"
    reason += left_out
    if chosen != "float32":
        return built[chosen], DtypeChoice(chosen, "timing", reason, timings, verdicts)
    return model, DtypeChoice(chosen, "timing", reason, timings, verdicts, layout, layouts)


def _pinned(model: Any, dtype: str, device: str,
            verdicts: dict[str, bool] | None) -> tuple[Any, DtypeChoice]:
    why = "pinned by config (llm_dtype / TUNESHIP_LLM_DTYPE)"
    if verdicts is not None and not verdicts.get(dtype, dtype == "float32"):
        log.warning("serving %s as pinned although its parity did not pass", dtype)
        why += "; its parity did not pass"
    if dtype == "float32" and device == "cpu":
        layout, layouts = choose_layout(model)
        return model, DtypeChoice(dtype, "config", why, verdicts=verdicts,
                                  weight_layout=layout, layout_timings_ms=layouts)
    return _cast(model, dtype), DtypeChoice(dtype, "config", why, verdicts=verdicts)


def _cast(model: Any, dtype: str) -> Any:
    """`model` in `dtype`: int8 quantizes its linear layers in place (int8_weights)."""
    if dtype == "int8":
        quantize_int8(model)
        return model
    return model.to(getattr(torch, dtype))
