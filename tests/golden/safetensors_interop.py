#!/usr/bin/python3
"""Safetensors interoperability between s2h and PyTorch (used by tests/test_safetensors.cpp).

Run with Debian's python3 (python3-torch); no safetensors package is needed:
the format is parsed and written with json + struct + raw bytes.

    /usr/bin/python3 tests/golden/safetensors_interop.py check FILE
        FILE was written by s2h (test SafetensorsInterop.TorchReadsOurFile).
        Verifies the header layout, names, file order, dtypes, shapes, values
        and metadata against the pattern below (expected()). Exit 0 when all
        match; otherwise prints every mismatch and exits 1.

    /usr/bin/python3 tests/golden/safetensors_interop.py write FILE
        Writes a file with PyTorch tensors (written()) that the C++ test reads
        and checks value by value.

Both patterns are duplicated in the C++ test; change them together.
"""
import json
import math
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F64": torch.float64, "BF16": torch.bfloat16, "I64": torch.int64, "U8": torch.uint8}
NAMES = {v: k for k, v in DTYPES.items()}


# ---------------------------------------------------------------- what s2h writes
def expected():
    """name -> tensor, in the order the C++ test saves them, and the metadata."""
    t = {}
    t["a"] = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    t["b"] = torch.tensor([[-2.5, 0.0, 1.0], [0.15625, 256.0, -0.0078125]], dtype=torch.bfloat16)
    t["c"] = torch.tensor([-(2 ** 40), -1, 0, 1, 2 ** 62], dtype=torch.int64)
    t["d"] = torch.tensor([[0, 1, 2, 127], [128, 200, 254, 255]], dtype=torch.uint8)
    t["e"] = torch.tensor([[1.0 / 3.0, math.pi], [-1e300, 5e-324]], dtype=torch.float64)
    # saved from a transposed (non-contiguous) view of arange(6).reshape(2, 3)
    t["t"] = torch.arange(6, dtype=torch.float32).reshape(2, 3).t().contiguous()
    t["s"] = torch.tensor(2.5, dtype=torch.float64)  # 0-d scalar
    t["z"] = torch.zeros(0, 3, dtype=torch.float32)  # empty
    meta = {"format": "pt", "note": "s2h interop \u2713 \"quoted\"\nsecond line"}
    return t, meta


# ---------------------------------------------------------------- what torch writes
def written():
    t = {}
    t["w_f32"] = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) * 0.5 - 3.0
    t["w_bf16"] = torch.tensor([[1.0, -2.0], [0.5, 3.140625], [-0.0, 65536.0]], dtype=torch.bfloat16)
    t["w_i64"] = torch.tensor([[-(2 ** 62), -7], [0, 9_000_000_000]], dtype=torch.int64)
    t["w_u8"] = torch.arange(0, 256, 17, dtype=torch.int64).to(torch.uint8)  # 16 values 0..255
    t["w_f64"] = torch.tensor([0.1, -1e-310, 1e308], dtype=torch.float64)
    t["w_scalar"] = torch.tensor(7.25, dtype=torch.float32)
    t["a_late"] = torch.tensor([[1, 2, 3]], dtype=torch.uint8)  # first by name, late in the file
    # Last, so that no other tensor starts at its offset (the empty-tensor tie is tested on its own).
    t["w_empty"] = torch.zeros(2, 0, dtype=torch.float64)
    meta = {"writer": "torch", "torch": torch.__version__}
    return t, meta


def raw_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        return t.reshape(-1).view(torch.uint8).numpy().tobytes()  # numpy has no bfloat16
    return t.numpy().tobytes()


def save(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        data = raw_bytes(t)
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- reading
def load(path, errors):
    """Parses FILE with json + struct + torch.frombuffer. Returns (ordered [(name, tensor)], metadata)."""
    with open(path, "rb") as f:
        buf = bytearray(f.read())
    if len(buf) < 8:
        errors.append(f"file has only {len(buf)} bytes")
        return [], {}
    (hlen,) = struct.unpack("<Q", bytes(buf[:8]))
    if 8 + hlen > len(buf):
        errors.append(f"header length {hlen} exceeds the file ({len(buf)} bytes)")
        return [], {}
    if (8 + hlen) % 8 != 0:
        errors.append(f"data section starts at byte {8 + hlen}, not aligned to 8")
    header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    meta = header.pop("__metadata__", {})
    start = 8 + hlen
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    out, pos = [], 0
    for name, info in entries:
        b, e = info["data_offsets"]
        if b != pos:
            errors.append(f"tensor {name!r} starts at {b}, expected {pos} (gap or overlap)")
        pos = e
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            errors.append(f"tensor {name!r}: unknown dtype {info['dtype']!r}")
            continue
        shape = info["shape"]
        numel = math.prod(shape)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if e - b != numel * itemsize:
            errors.append(f"tensor {name!r}: {e - b} bytes for shape {shape} of {info['dtype']}")
            continue
        if numel == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype, count=numel, offset=start + b).reshape(shape).clone()
        out.append((name, t))
    if start + pos != len(buf):
        errors.append(f"data section has {len(buf) - start} bytes, tensors cover {pos}")
    return out, meta


def same_values(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():  # bitwise, so -0.0, denormals and NaN count
        width = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[a.dtype]
        return torch.equal(a.reshape(-1).view(width), b.reshape(-1).view(width))
    return torch.equal(a, b)


def check(path):
    errors = []
    got, meta = load(path, errors)
    want, want_meta = expected()
    names = [n for n, _ in got]
    if names != list(want.keys()):
        errors.append(f"names in file order {names}, expected {list(want.keys())}")
    got_d = dict(got)
    for name, w in want.items():
        if name not in got_d:
            errors.append(f"tensor {name!r} is missing")
            continue
        g = got_d[name]
        if g.dtype != w.dtype:
            errors.append(f"tensor {name!r}: dtype {g.dtype}, expected {w.dtype}")
        elif tuple(g.shape) != tuple(w.shape):
            errors.append(f"tensor {name!r}: shape {list(g.shape)}, expected {list(w.shape)}")
        elif not same_values(g, w):
            errors.append(f"tensor {name!r}: values {g.tolist()}, expected {w.tolist()}")
    if meta != want_meta:
        errors.append(f"metadata {meta!r}, expected {want_meta!r}")
    for e in errors:
        print("mismatch:", e)
    if errors:
        return 1
    print(f"ok: {len(got)} tensors and {len(meta)} metadata entries match")
    return 0


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("check", "write"):
        print(__doc__)
        return 2
    if sys.argv[1] == "check":
        return check(sys.argv[2])
    t, meta = written()
    save(sys.argv[2], t, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
