#!/usr/bin/env python3
"""text300: real text embeddings (word2vec + SIF mean), 300 dims, cosine / inner product.

Makes a big-ann style dataset from real, offline texts: the one-line summaries of PyPI and
npm packages (the package lists under /work/.library/env/packages on the project's
machines), optionally with Debian's long package descriptions as extra training text.

    pip install gensim numpy          # gensim 4.x; brings scipy
    python3 datasets/text-embeddings.py --out DIR [--n 500000]

Optional extra training text (Debian's English long descriptions; training only, never
documents), made with apt, into /tmp, without touching the system's lists:

    mkdir -p /tmp/aptl/partial
    apt-get update -qq -o Acquire::Languages=en -o Dir::State::Lists=/tmp/aptl
    /usr/lib/apt/apt-helper cat-file /tmp/aptl/*_debian_dists_*_main_i18n_Translation-en.lz4 \
        > /tmp/debian-translation-en.txt
    python3 datasets/text-embeddings.py --out DIR --debian /tmp/debian-translation-en.txt

Steps:
 1. Texts: each package's summary (npm's "[tested here: ...]" prefix, which is not the
    authors' text, is cut off). Tokens: lowercase, split on non-alphanumerics (Unicode),
    keep tokens of length >= 2.
 2. Word vectors: gensim Word2Vec (skip-gram, 300 dims, window 5, min_count 3, 5 epochs,
    fixed seed and a fixed string hash) trained on the distinct token sequences of all
    summaries (+ Debian descriptions if given).
 3. Documents: distinct summaries (by normalized text = the joined token sequence; then also
    by the multiset of known tokens, which would give the same vector) with >= 4 known
    tokens. Vector = sum_w a / (a + p(w)) * v(w) over its known tokens (a = 1e-3, p = unigram
    frequency in the training corpus), L2-normalized. Shuffled with a fixed seed: the first
    --nq are the queries, the next --n the base.
 4. Short queries: the same held-out packages, embedded by their NAME only (split on
    non-alphanumerics and camelCase; plain mean of known token vectors, normalized); names
    without a known token are dropped, so there may be fewer than --nq.
 5. Ground truth: exact top-k by inner product (descending, ties by smaller id) with numpy
    float32 matrix products in blocks.

Outputs in DIR (.fbin: uint32 n, uint32 d, n*d float32; .ibin: uint32 n, uint32 k, n*k int32
ids, n*k float32 distances = inner products; all little-endian):
    base.fbin query.fbin query_short.fbin gt.ibin gt_short.ibin
    base_texts.txt query_texts.txt        summaries, one line per row
    base_names.txt query_names.txt        "pypi:NAME" / "npm:NAME", one line per row
    query_short_texts.txt                 the name tokens that were embedded
    query_short_rows.txt                  row of query.fbin each short query comes from
    stats.json                            counts, timings, top-1 statistics

Reproducibility: the seed, a fixed string hash and the file order fix everything except
word2vec's thread scheduling; gensim is only deterministic with --workers 1 (slower). With
2 workers the vocabulary and all counts repeat, the vectors and statistics differ slightly.
A run on 2 cores (sg=1, 5 epochs, 11.6M training tokens) takes about 7.5 minutes, 4.5 of
them training.
"""
import argparse
import json
import logging
import os
import re
import sys
import time
import zlib

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")  # BLAS threads for the ground truth
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")

import numpy as np
import scipy.sparse as sp
from gensim.models import Word2Vec

TOKEN = re.compile(r"[^\W_]+")                       # runs of Unicode letters/digits
CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
TESTED = re.compile(r"^\[tested here:[^\]]*\]\s*")   # a prefix in npm.tsv, not author text


def tokens(text):
    return [t for t in TOKEN.findall(text.lower()) if len(t) >= 2]


def name_tokens(name):
    """'@aws-sdk/client-s3' -> aws sdk client s3; 'fastAPIUtils' -> fast api utils."""
    return tokens(" ".join(CAMEL.sub(" ", part) for part in TOKEN.findall(name)))


def stable_hash(s):
    """Seeds each word's initial vector; Python's hash() changes with PYTHONHASHSEED."""
    return zlib.crc32(s.encode("utf-8"))


def clean(text):
    return " ".join(text.split())                    # one line: no tabs or newlines


def read_packages(pkgdir):
    """[(source:name, summary)] in file order, PyPI then npm; empty summaries skipped."""
    rows = []
    for fname, col, tag in (("pypi.tsv", 4, "pypi"), ("npm.tsv", 3, "npm")):
        with open(os.path.join(pkgdir, fname), encoding="utf-8", errors="replace") as f:
            header = f.readline().rstrip("\n").split("\t")
            assert header[0] == "name" and header[col].startswith("summary"), (fname, header)
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if len(cols) <= col:
                    continue
                text = clean(TESTED.sub("", cols[col]))
                if text:
                    rows.append((f"{tag}:{cols[0]}", text))
    return rows


def read_debian(path):
    """Description-en paragraphs of a Debian Translation-en file (short + long text)."""
    out, cur = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Description-en:"):
                cur = [line[len("Description-en:"):]]
            elif line.startswith(" ") and cur:
                if line.strip() != ".":              # '.' marks a blank line in Debian text
                    cur.append(line)
            else:
                if cur:
                    out.append(" ".join(cur))
                cur = []
    if cur:
        out.append(" ".join(cur))
    return out


def write_fbin(path, x):
    x = np.ascontiguousarray(x, dtype="<f4")
    with open(path, "wb") as f:
        np.array(x.shape, dtype="<u4").tofile(f)
        x.tofile(f)


def write_ibin(path, ids, dist):
    with open(path, "wb") as f:
        np.array(ids.shape, dtype="<u4").tofile(f)
        np.ascontiguousarray(ids, dtype="<i4").tofile(f)
        np.ascontiguousarray(dist, dtype="<f4").tofile(f)


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for s in lines:
            f.write(s + "\n")


def exact_topk_ip(base, queries, k, block=500):
    """Exact top-k by inner product: descending score, ties broken by the smaller id."""
    nq = len(queries)
    ids = np.empty((nq, k), dtype=np.int32)
    dist = np.empty((nq, k), dtype=np.float32)
    for s in range(0, nq, block):
        scores = queries[s:s + block] @ base.T                      # float32 sgemm
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, 1).min(1)            # k-th largest score
        for r in range(len(scores)):
            cand = part[r]
            if np.count_nonzero(scores[r] >= kth[r]) > k:           # a tie at the k-th place
                cand = np.flatnonzero(scores[r] >= kth[r])
            order = np.lexsort((cand, -scores[r, cand]))[:k]        # score desc, then id asc
            ids[s + r] = cand[order]
            dist[s + r] = scores[r, cand[order]]
    return ids, dist


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n", type=int, default=500_000, help="base vectors (fewer if fewer docs)")
    ap.add_argument("--nq", type=int, default=10_000, help="held-out query documents")
    ap.add_argument("--k", type=int, default=100, help="ground-truth depth")
    ap.add_argument("--packages", default="/work/.library/env/packages",
                    help="folder with pypi.tsv and npm.tsv")
    ap.add_argument("--debian", help="Debian Translation-en file: extra training text")
    ap.add_argument("--dim", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--sg", type=int, default=1, help="1 = skip-gram, 0 = CBOW")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help="show gensim's training progress")
    args = ap.parse_args()
    logging.basicConfig(format="%(asctime)s %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    stats = {"args": vars(args)}
    t_all = time.time()

    def log(msg):
        print(f"[{time.time() - t_all:7.1f}s] {msg}", flush=True)

    # 1. Texts and tokens.
    rows = read_packages(args.packages)
    log(f"{len(rows)} packages with a summary")
    stats["packages_with_summary"] = len(rows)
    seen, docs = set(), []                       # docs: (name, summary, tokens), distinct text
    for name, text in rows:
        toks = tokens(text)
        key = " ".join(toks)
        if toks and key not in seen:
            seen.add(key)
            docs.append((name, text, toks))
    del rows, seen
    sentences = [d[2] for d in docs]
    if args.debian:
        deb = {" ".join(t): t for t in map(tokens, read_debian(args.debian)) if t}
        sentences += list(deb.values())
        stats["debian_descriptions"] = len(deb)
        del deb
    stats["distinct_summaries"] = len(docs)
    stats["training_sentences"] = len(sentences)
    stats["training_tokens"] = int(sum(map(len, sentences)))
    log(f"{len(docs)} distinct summaries; training on {len(sentences)} sentences, "
        f"{stats['training_tokens']} tokens")

    # 2. Word vectors.
    t0 = time.time()
    model = Word2Vec(sentences, vector_size=args.dim, window=5, min_count=3, sg=args.sg,
                     workers=args.workers, epochs=args.epochs, seed=args.seed,
                     hashfxn=stable_hash)
    stats["train_seconds"] = round(time.time() - t0, 1)
    wv = model.wv
    del model, sentences
    counts = np.array([wv.get_vecattr(w, "count") for w in wv.index_to_key], dtype=np.float64)
    sif = (1e-3 / (1e-3 + counts / counts.sum())).astype(np.float32)
    vocab = wv.key_to_index
    stats["vocabulary"] = len(vocab)
    log(f"word2vec: {len(vocab)} words, {stats['train_seconds']} s")

    # 3. Documents: >= 4 known tokens, distinct known-token multisets, shuffled.
    seen, kept = set(), []
    for name, text, toks in docs:
        known = [vocab[t] for t in toks if t in vocab]
        key = tuple(sorted(known))
        if len(known) >= 4 and key not in seen:
            seen.add(key)
            kept.append((name, text, known))
    del docs, seen
    stats["documents"] = len(kept)
    perm = np.random.default_rng(args.seed).permutation(len(kept))
    nq = min(args.nq, len(kept) // 2)
    n = min(args.n, len(kept) - nq)
    qdocs = [kept[i] for i in perm[:nq]]
    bdocs = [kept[i] for i in perm[nq:nq + n]]
    log(f"{len(kept)} documents with >= 4 known tokens; base {n}, queries {nq}")

    def embed(id_lists, weights):
        """Weighted sum of word vectors per list (sparse x dense), then L2-normalized."""
        indptr = np.cumsum([0] + [len(l) for l in id_lists])
        idx = np.fromiter((i for l in id_lists for i in l), dtype=np.int64, count=indptr[-1])
        m = sp.csr_matrix((weights[idx], idx, indptr), shape=(len(id_lists), len(weights)))
        x = np.asarray(m.astype(np.float64) @ wv.vectors.astype(np.float64))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32)

    base = embed([d[2] for d in bdocs], sif)
    query = embed([d[2] for d in qdocs], sif)

    # 4. Short queries: the held-out packages' names.
    short_rows, short_ids, short_text = [], [], []
    for r, (name, _, _) in enumerate(qdocs):
        known = [t for t in name_tokens(name.split(":", 1)[1]) if t in vocab]
        if known:
            short_rows.append(r)
            short_ids.append([vocab[t] for t in known])
            short_text.append(" ".join(known))
    query_short = embed(short_ids, np.ones(len(vocab), dtype=np.float32))
    log(f"{len(short_rows)} short (name) queries")

    write_fbin(os.path.join(args.out, "base.fbin"), base)
    write_fbin(os.path.join(args.out, "query.fbin"), query)
    write_fbin(os.path.join(args.out, "query_short.fbin"), query_short)
    write_lines(os.path.join(args.out, "base_texts.txt"), [d[1] for d in bdocs])
    write_lines(os.path.join(args.out, "query_texts.txt"), [d[1] for d in qdocs])
    write_lines(os.path.join(args.out, "base_names.txt"), [d[0] for d in bdocs])
    write_lines(os.path.join(args.out, "query_names.txt"), [d[0] for d in qdocs])
    write_lines(os.path.join(args.out, "query_short_texts.txt"), short_text)
    write_lines(os.path.join(args.out, "query_short_rows.txt"), map(str, short_rows))

    # 5. Ground truth.
    for tag, q in (("", query), ("_short", query_short)):
        t0 = time.time()
        ids, dist = exact_topk_ip(base, q, args.k)
        write_ibin(os.path.join(args.out, f"gt{tag}.ibin"), ids, dist)
        stats[f"gt{tag}_seconds"] = round(time.time() - t0, 1)
        stats[f"query{tag}"] = {
            "count": len(q),
            "mean_top1_ip": round(float(dist[:, 0].mean()), 4),
            "mean_top10_ip": round(float(dist[:, 9].mean()), 4),
            "mean_top100_ip": round(float(dist[:, -1].mean()), 4),
        }
        log(f"gt{tag}: {stats[f'query{tag}']}")
    stats.update(base=n, queries=nq, query_short=len(short_rows), dim=args.dim,
                 total_seconds=round(time.time() - t_all, 1))
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    log("done")


if __name__ == "__main__":
    sys.exit(main())
