#!/usr/bin/env python3
"""DiskANN (diskannpy 0.7.0) disk index as a benchmark peer. Run with bench/.venv-diskann/bin/python.

  build  --data F.fbin|F.u8bin --metric l2|mips --dir DIR --ram-bytes-per-vector B --threads T [--R 64 --L 100]
  search --dir DIR --queries Q --gt GT -k 10 --L 10,20,40 --beam 2,4 --threads 1 [--drop-cache]

Both print one JSON object on stdout (DiskANN's own progress goes to stderr). See bench/README.md.
"""
import argparse
import math
import os
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECTOR = 4096
# Files of a disk index that `StaticDiskIndex` never reads: the in-memory Vamana graph and the full copy of
# the vectors the build leaves behind, and the warm-up sample (read only when nodes are cached, which we don't).
NOT_READ_BY_SEARCH = ("ann_mem.index", "ann_mem.index.data", "ann_sample_data.bin", "ann_sample_ids.bin")


def diskann_ram_gb(bytes_per_vector, n):
    """search_memory_maximum (GB) that makes DiskANN keep `bytes_per_vector` PQ bytes per vector in RAM.

    DiskANN: chunks = floor(budget_bytes / n) with budget_bytes = GB * 2^30, after subtracting 0.25 GB of
    'cache slack' when GB - 0.25 > 1.0; diskannpy passes GB through std::to_string (6 decimals). Aim at
    B + 0.5 bytes and round the GB figure up so the floor lands on B."""
    gb = (bytes_per_vector + 0.5) * n / 2**30
    if gb > 1.0:  # DiskANN takes 0.25 GB away from a budget above 1.25 GB: give it back
        gb += 0.25
    return math.ceil(gb * 1e6) / 1e6


def disk_index_meta(directory):
    """Header of ann_disk.index: npts, ndims, medoid, max_node_len, nnodes_per_sector (DiskANN layout)."""
    path = os.path.join(directory, "ann_disk.index")
    with open(path, "rb") as f:
        nr, nc = struct.unpack("<ii", f.read(8))
        vals = struct.unpack("<%dQ" % nr, f.read(8 * nr))
    meta = {"npts": vals[0], "ndims": vals[1], "medoid": vals[2], "max_node_len": vals[3], "nnodes_per_sector": vals[4]}
    meta["sectors_per_node"] = max(1, -(-meta["max_node_len"] // SECTOR))
    return meta


def pq_bytes_per_vector(directory):
    with open(os.path.join(directory, "ann_pq_compressed.bin"), "rb") as f:
        n, chunks = struct.unpack("<ii", f.read(8))
    return chunks


def index_files(directory):
    files = {}
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            files[name] = os.path.getsize(p)
    read = {k: v for k, v in files.items() if k not in NOT_READ_BY_SEARCH}
    return files, sum(read.values())


def cmd_build(a):
    import numpy as np
    import diskannpy

    common.set_single_thread_env(a.threads)
    dtype = common.dtype_of(a.data)
    n, d = common.bin_shape(a.data)
    if a.metric == "mips" and dtype != np.float32:
        raise SystemExit("DiskANN supports mips only for float32 data")
    if a.metric == "cosine":
        raise SystemExit("diskannpy 0.7.0 refuses cosine for disk indexes: use l2 on unit-norm data (same ranking)")
    bpv = int(a.ram_bytes_per_vector)
    gb = diskann_ram_gb(bpv, n)
    os.makedirs(a.dir, exist_ok=True)
    for name in os.listdir(a.dir):  # a fresh build every time
        if name.startswith("ann_"):
            os.remove(os.path.join(a.dir, name))
    print(f"diskann build: {n} x {d} {np.dtype(dtype).name}, metric {a.metric}, R {a.R}, L {a.L}, "
          f"{bpv} B/vector -> search_memory_maximum {gb} GB, {a.threads} thread(s)", file=sys.stderr)
    t0 = time.perf_counter()
    diskannpy.build_disk_index(
        data=os.path.abspath(a.data), distance_metric=a.metric, index_directory=a.dir,
        complexity=a.L, graph_degree=a.R, search_memory_maximum=gb,
        build_memory_maximum=a.build_memory_gb, num_threads=a.threads,
        vector_dtype=dtype, index_prefix="ann")
    secs = time.perf_counter() - t0
    files, index_bytes = index_files(a.dir)
    common.emit_json({
        "system": "diskann", "n": n, "d": d, "dtype": np.dtype(dtype).name, "metric": a.metric,
        "R": a.R, "L": a.L, "threads": a.threads,
        "ram_bytes_per_vector_requested": bpv, "search_memory_maximum_gb": gb,
        "pq_bytes_per_vector": pq_bytes_per_vector(a.dir),
        "build_seconds": round(secs, 3), "peak_rss_bytes": common.peak_rss_bytes(),
        "index_bytes": index_bytes, "files": files, "disk_index": disk_index_meta(a.dir),
    })


def cmd_search(a):
    import numpy as np
    import diskannpy

    common.set_single_thread_env(a.threads)
    meta = disk_index_meta(a.dir)
    qfile = common.read_bin(a.queries, a.limit)
    dtype = qfile.dtype
    queries = np.ascontiguousarray(qfile)
    nq = queries.shape[0]
    gt_ids, gt_dist = common.read_ibin(a.gt) if a.gt else (None, None)
    t0 = time.perf_counter()
    # num_nodes_to_cache 0 and cache_mechanism 0: nothing but the PQ codes (and pivots) in RAM.
    # num_threads >= 2 at load: with 1, diskannpy 0.7.0 deadlocks in the constructor (the medoid read in
    # use_medoids_data_as_centroids waits forever for a second per-thread scratch). It only sizes the
    # scratch/IO-context pool; searches below run on this one thread (batch_search with --threads).
    index = diskannpy.StaticDiskIndex(index_directory=a.dir, num_threads=max(2, a.threads),
                                      num_nodes_to_cache=a.cache_nodes,
                                      cache_mechanism=1 if a.cache_nodes > 0 else 0, index_prefix="ann")
    load_secs = time.perf_counter() - t0
    rss_after_load = common.peak_rss_bytes()
    # diskannpy 0.7.0 reads the disk index through LinuxAlignedFileReader (libaio io_submit, O_DIRECT): check that
    # the bundled libaio is actually mapped into this process after the load rather than assuming it.
    maps = common.mapped_libraries(["libaio"]) or {}
    io_engine = "libaio" if maps.get("libaio") else "unknown (libaio not mapped)"
    rows = []
    for beam in common.parse_int_list(a.beam):
        for L in common.parse_int_list(a.L):
            L_eff = max(L, a.k)
            drop = {"page_cache_dropped": False, "drop_cache_error": "not requested (no --drop-cache)"}
            if a.drop_cache:  # before every (L, beam) setting
                common.drop_caches(drop)
            load0 = common.loadavg()
            ids = np.empty((nq, a.k), dtype=np.int64)
            lat = np.empty(nq, dtype=np.int64)
            io0 = common.proc_io()
            wall0 = time.perf_counter()
            for i in range(nq):
                t = time.perf_counter_ns()
                res = index.search(queries[i], k_neighbors=a.k, complexity=L_eff, beam_width=beam)
                lat[i] = time.perf_counter_ns() - t
                ids[i] = res.identifiers
            wall = time.perf_counter() - wall0
            io1 = common.proc_io()
            read_bytes = io1.get("read_bytes", 0) - io0.get("read_bytes", 0)
            qps_batch = None
            if not a.no_batch:
                b0 = time.perf_counter()
                bres = index.batch_search(queries, k_neighbors=a.k, complexity=L_eff,
                                          num_threads=a.threads, beam_width=beam)
                bwall = time.perf_counter() - b0
                qps_batch = round(nq / bwall, 1)
            row = {"L": L_eff, "beam": beam, "qps": round(nq / wall, 1), "qps_batch": qps_batch,
                   "io_engine": io_engine}
            row.update(drop)
            row.update(common.latency_stats(lat))
            row["recall"] = round(common.recall_at_k(ids, gt_ids, gt_dist, a.k), 5) if gt_ids is not None else None
            if not a.no_batch and gt_ids is not None:
                row["recall_batch"] = round(common.recall_at_k(np.asarray(bres.identifiers), gt_ids, gt_dist, a.k), 5)
            # diskannpy computes QueryStats but does not return them: derive IO from /proc/self/io instead
            # (read_bytes counts O_DIRECT reads submitted by this process; each node read is one IO of
            # sectors_per_node x 4 KiB). null when the kernel does not account them.
            # mean_pages: 4 KiB pages (DiskANN sectors) read per query = read_bytes / 4096; mean_requests (= mean_ios):
            # node reads, one io_submit request of sectors_per_node sectors each.
            if read_bytes > 0:
                row["mean_kib"] = round(read_bytes / nq / 1024, 2)
                row["mean_pages"] = round(read_bytes / nq / SECTOR, 2)
                row["mean_ios"] = round(read_bytes / nq / (SECTOR * meta["sectors_per_node"]), 2)
            else:
                row["mean_kib"] = row["mean_pages"] = row["mean_ios"] = None
            row["mean_requests"] = row["mean_ios"]
            row["load_before"], row["load_after"] = load0, common.loadavg()
            rows.append(row)
            print(f"diskann L {L_eff:4d} beam {beam}: recall {row['recall']}, {row['qps']} QPS "
                  f"(batch {qps_batch}), mean {row['mean_us']} us, p99 {row['p99_us']} us, "
                  f"{row['mean_ios']} IOs, {row['mean_pages']} pages, {row['mean_kib']} KiB, "
                  f"cache dropped {row['page_cache_dropped']}", file=sys.stderr)
    files, index_bytes = index_files(a.dir)
    common.emit_json({
        "system": "diskann", "dir": a.dir, "queries": nq, "k": a.k, "threads": a.threads,
        "cache_nodes": a.cache_nodes, "drop_cache": a.drop_cache, "load_seconds": round(load_secs, 3),
        "pq_bytes_per_vector": pq_bytes_per_vector(a.dir), "index_bytes": index_bytes,
        "disk_index": meta, "peak_rss_bytes": common.peak_rss_bytes(), "rss_after_load_bytes": rss_after_load,
        "io_engine": io_engine, "mapped_libraries": maps,
        "io_counting": {"mean_pages": "read_bytes of /proc/self/io over the single-query pass / 4096 (4 KiB sectors) / "
                                      "queries",
                        "mean_requests": "read_bytes / (4096 x sectors_per_node) / queries: node reads, one libaio "
                                         "request each (diskannpy does not expose QueryStats)",
                        "sectors_per_node": meta["sectors_per_node"]},
        "rows": rows,
    })


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a disk index")
    b.add_argument("--data", required=True, help=".fbin (float32), .u8bin (uint8) or .i8bin (int8)")
    b.add_argument("--metric", required=True, choices=["l2", "mips", "cosine"])
    b.add_argument("--dir", required=True)
    b.add_argument("--ram-bytes-per-vector", type=int, required=True, help="PQ code bytes per vector kept in RAM")
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--R", type=int, default=64, help="graph degree")
    b.add_argument("--L", type=int, default=100, help="build complexity")
    b.add_argument("--build-memory-gb", type=float, default=8.0)
    s = sub.add_parser("search", help="sweep L x beam width")
    s.add_argument("--dir", required=True)
    s.add_argument("--queries", required=True)
    s.add_argument("--gt")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--L", default="10,20,40,60,80,120,160")
    s.add_argument("--beam", default="2,4")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--drop-cache", action="store_true", help="drop the page cache before each (L, beam)")
    s.add_argument("--cache-nodes", type=int, default=0, help="nodes DiskANN caches in RAM (default 0: RAM matched)")
    s.add_argument("--limit", type=int, help="use the first N queries only")
    s.add_argument("--no-batch", action="store_true", help="skip the batch_search pass (qps_batch null)")
    a = p.parse_args()
    common.claim_stdout()
    cmd_build(a) if a.cmd == "build" else cmd_search(a)


if __name__ == "__main__":
    main()
