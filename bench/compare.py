#!/usr/bin/env python3
"""The side-by-side comparison: one command builds switchboard, the load generator and the
comparison peers, runs the same loadgen scenarios against each in one run on this machine,
prints a table of each peer's figures with its ratio to switchboard, and writes the table,
the machine and every command to bench/results/.

Peers: switchboard with durability `fsync` and `none`, the Bun relay (bench/peers/bun-relay),
the tokio-tungstenite relay (bench/peers/tokio-relay) and the limit (bench/peers/uring-echo),
a bare io_uring echo of the same frames with no routing: the machine's ceiling for this
traffic. Each is measured with:
- `idle`: N authenticated idle connections, user memory per connection (RSS growth / N);
- `pairs` at a ladder of offered rates: the highest rate it sustains (everything
  acknowledged and delivered, nothing lost or refused, ack p99 under --p99-limit-ms), and
  at half of switchboard's sustained rate, the p50 and p99 of `message_received` and of
  delivery for every peer. The limit is measured with `echo` instead of `pairs` (the same
  frames at the same rates, each echoed back to its sender): its `ack` is the echo, and it
  has no delivery;
- `storm` at a fifth of switchboard's sustained rate with a 10x spike (twice what switchboard
  sustains) for 3 s: the ack p99 before, the worst second of the spike, and the seconds the
  ack p99 takes to come back after it. The limit has no storm (it is an echo);
- `churn` at the same rate as the latency run, receivers closing and coming back all the
  time: for switchboard only, because the relays keep no inbox and drop what comes for a
  user who is away, so their `lost` would say nothing about them.
- `fanout` (only when asked for, `--steps ...,fanout`): groups of 10, 100 and 500 members
  over the same number of connections, one sender per group, at one offered number of
  deliveries per second for every peer and size: deliveries/s, the delivery p50 and p99 to
  the last member of each message, lost, duplicates and the server's CPU per delivery.
  Switchboard forms its groups with POST /v1/groups, the relays with their own `join`; the
  limit has no groups and no fanout. `--fanout-shards` adds switchboard rows per shard count,
  `--fanout-ladder` climbs deliveries/s to each peer's highest sustained;
- `scaling` (only when asked for): at 1, 2, 4, ... threads up to the server's CPUs,
  switchboard none with that many shards against the tokio relay and the echo with as many
  threads, each up the ladder: sustained msg/s, per thread, CPU per message, p50 / p99.

`--server-cpus` and `--client-cpus` pin the servers and the load generator to disjoint CPU
lists with taskset.

It also draws the ladder (acknowledged msg/s and ack p99 at each offered rate, a line per
peer) as an SVG beside the table, with `switchboard-loadgen plot`: the load generator's SVG
writer, so that the project has one.

Usage: bench/compare.py [--quick] [--no-build] [--peers bun,tokio,echo] [--dry-run]
                        [--rates 10000,20000,...] [--idle-conns N]
                        [--steps idle,ladder,latency,storm,churn,fanout,scaling | all]
                        [--fanout-sizes 10,100,500] [--fanout-conns N] [--fanout-deliveries N]
                        [--fanout-shards 1,0] [--fanout-ladder D1,D2,...]
                        [--server-cpus 0-3] [--client-cpus 4-7]
"""

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "compare-secret"
RELEASE = ROOT / "target" / "release"


# Where the servers and the load generator run (--server-cpus, --client-cpus): a CPU list
# for `taskset -c`, or None for anywhere.
PIN = {"server": None, "client": None}


def pinned(role, cmd):
    """`cmd` under `taskset -c` on the CPUs of `role` (server or client), when pinned."""
    cpus = PIN[role]
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


def parse_cpus(text):
    """`0-3,6`: a CPU list as taskset takes it; kept as text, checked here."""
    cpus = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise argparse.ArgumentTypeError(f"{text!r}: a CPU list such as 0-3,6")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise argparse.ArgumentTypeError(f"{text!r}: no CPU")
    return text.strip()


def cpu_count(cpus):
    """How many CPUs a list names (None: this machine's)."""
    if cpus is None:
        return os.cpu_count()
    count = 0
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def run(cmd, **kwargs):
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


class Peer:
    """A server under test, started on an ephemeral port and stopped when done."""

    def __init__(self, name, cmd, env=None, cwd=None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.env = dict(os.environ, **(env or {}))
        self.cwd = cwd
        self.proc = None
        self.url = None
        # Switchboard's HTTP API, from its listening line; the relays have none.
        self.http = None

    def start(self):
        self.proc = subprocess.Popen(
            pinned("server", self.cmd),
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            found = re.search(r"ws://([0-9.:]+)/ws", line)
            if found:
                self.url = f"ws://{found.group(1)}/ws"
                http = re.search(r"\(http ([0-9.:]+)\)", line)
                self.http = http.group(1) if http else None
                return self
        self.stop()
        raise RuntimeError(f"{self.name} did not print its listening line")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid):
    """User and system CPU time a process has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(") ", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def loadgen(args, report):
    """Runs the load generator and returns its JSON report (also on a failed run)."""
    cmd = pinned("client", [RELEASE / "switchboard-loadgen", *args, "--jwt-secret", SECRET,
                            "--quiet", "--json", report])
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], stdout=subprocess.DEVNULL, timeout=600)
    with open(report) as f:
        return json.load(f)


# The scenario each peer is measured with, and where its report keeps the round trip and
# its throughput: `echo` counts its echoes as `acknowledged` and names its latency `echo`.
PAIRS = {"scenario": "pairs", "latency": "ack", "throughput": "acknowledged"}
ECHO = {"scenario": "echo", "latency": "echo", "throughput": "echoed"}

LIMIT = "limit (io_uring echo)"


# The peers --peers picks from (switchboard always runs: it is what the others are compared
# with), by the name given on the command line.
OPTIONAL_PEERS = {"bun": "bun relay", "tokio": "tokio relay", "echo": LIMIT}

BUN = ROOT / "bench/peers/bun-relay/node_modules/.bin/bun"


def peers(data_dir, chosen):
    """(name, how to start it, how to load it) for switchboard and every peer in `chosen` (the
    keys of OPTIONAL_PEERS), in the order of the tables."""
    picked = {OPTIONAL_PEERS[key] for key in chosen}
    return [peer for peer in all_peers(data_dir)
            if peer[0].startswith("switchboard") or peer[0] in picked]


def all_peers(data_dir):
    switchboard = RELEASE / "switchboard"
    # The load comes from a few users per connection pair and one machine, standing for
    # many phones: the per-user and per-address rate limits are off.
    common = ["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
              "--jwt-secret", SECRET, "--user-msgs-per-s", "0", "--ip-connects-per-s", "0"]
    bun = BUN
    return [
        ("switchboard fsync", lambda: Peer(
            "switchboard fsync",
            [switchboard, *common, "--durability", "fsync", "--data-dir", data_dir / "fsync"],
            env={"RUST_LOG": "warn"}), PAIRS),
        ("switchboard none", lambda: Peer(
            "switchboard none",
            [switchboard, *common, "--durability", "none", "--data-dir", data_dir / "none"],
            env={"RUST_LOG": "warn"}), PAIRS),
        ("bun relay", lambda: Peer(
            "bun relay",
            [bun, "relay.js", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET],
            cwd=ROOT / "bench/peers/bun-relay"), PAIRS),
        ("tokio relay", lambda: Peer(
            "tokio relay",
            [RELEASE / "tokio-relay", "--listen", "127.0.0.1:0", "--jwt-secret", SECRET]),
         PAIRS),
        # No secret: the echo checks that a token is there, not what it says.
        (LIMIT, lambda: Peer(LIMIT, [RELEASE / "uring-echo", "--listen", "127.0.0.1:0"]), ECHO),
    ]


def sustained(report, p99_limit_ms, load=PAIRS):
    c = report["counters"]
    ack = report["latency_ms"].get(load["latency"], {})
    ok = (report["ok"] and c["lost"] == 0 and c["rejected"] == 0
          and c["unacknowledged"] == 0 and ack.get("p99") is not None
          and ack["p99"] <= p99_limit_ms)
    return ok


# The steps of a run, in their order; `fanout` runs only when asked for, since Switchboard's
# groups are new (until they land, its fanout rows say the groups could not be formed).
STEPS = ["idle", "ladder", "latency", "storm", "churn", "fanout", "scaling"]
DEFAULT_STEPS = [step for step in STEPS if step not in ("fanout", "scaling")]


def parse_steps(text):
    """`idle,ladder,...` (any subset, run in the order of STEPS) or `all`, as a list."""
    if text.strip() == "all":
        return list(STEPS)
    chosen = {step.strip() for step in text.split(",") if step.strip()}
    unknown = sorted(chosen - set(STEPS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown step(s) {', '.join(unknown)}: pick from {','.join(STEPS)}, or all"
            if unknown else f"no step: pick from {','.join(STEPS)}, or all")
    return [step for step in STEPS if step in chosen]


def parse_sizes(text):
    """`10,100,500`: group sizes of at least 2 members, as a list of ints."""
    sizes = parse_counts(text)
    if any(size < 2 for size in sizes):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a comma-separated list of group sizes, each at least 2")
    return sizes


def parse_counts(text):
    """`1,0` or `50000,100000`: whole numbers, at least 0, as a list of ints."""
    try:
        counts = [int(count) for count in text.split(",") if count.strip()]
    except ValueError:
        counts = []
    if not counts or any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of whole numbers")
    return counts


def fanout_plan(size, conns, deliveries):
    """The groups and the message rate (all groups together) of a fanout of groups of `size`
    over `conns` connections that offers `deliveries` per second: every message is delivered
    to size - 1 members."""
    groups = max(1, conns // size)
    return groups, deliveries / (size - 1)


def parse_peers(text):
    """`bun,tokio,echo` (any subset, in any order; empty: switchboard alone) as a list."""
    chosen = [key.strip() for key in text.split(",") if key.strip()]
    unknown = [key for key in chosen if key not in OPTIONAL_PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown)}: pick from {','.join(OPTIONAL_PEERS)} "
            "(switchboard always runs)")
    return list(dict.fromkeys(chosen))


def needs(chosen):
    """What a run with the peers `chosen` needs: the cargo packages to build, the binaries
    they leave in target/release, and whether bun (.ci/setup-tools) is wanted."""
    packages = ["switchboard", "switchboard-loadgen"]
    if "tokio" in chosen:
        packages.append("tokio-relay")
    if "echo" in chosen:
        packages.append("uring-echo")
    # Each package's binary has the package's name.
    binaries = [RELEASE / package for package in packages]
    return packages, binaries, "bun" in chosen


def missing_tools(chosen):
    """The files a --no-build run needs that are not there."""
    _, binaries, bun = needs(chosen)
    missing = [path for path in binaries if not os.access(path, os.X_OK)]
    if bun and not os.access(BUN, os.X_OK):
        missing.append(BUN)
    return missing


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer connections and shorter runs (a smoke test of the script)")
    parser.add_argument("--rates", default="10000,20000,30000,40000,50000,60000,80000")
    parser.add_argument("--conns", type=int, default=1000, help="pairs connections")
    parser.add_argument("--idle-conns", type=int, default=19000)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--p99-limit-ms", type=float, default=50.0,
                        help="a rate counts as sustained while ack p99 stays under this")
    parser.add_argument("--no-build", action="store_true",
                        help="use the release binaries and bun already there: no cargo build, "
                        "no .ci/setup-tools (stops if one is missing)")
    parser.add_argument("--peers", type=parse_peers, default=list(OPTIONAL_PEERS),
                        metavar="bun,tokio,echo",
                        help="the peers beside switchboard (fsync and none, which always run): "
                        "a comma-separated subset of bun, tokio, echo (the io_uring limit); "
                        "empty for switchboard alone [default: all]")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be built and run, check the binaries with "
                        "--no-build, and stop")
    parser.add_argument("--steps", type=parse_steps, default=list(DEFAULT_STEPS),
                        metavar="idle,ladder,latency,storm,churn,fanout,scaling",
                        help="the steps to run, a comma-separated subset, or all; without "
                        "the ladder, the later steps run at the first rung of --rates "
                        f"[default: {','.join(DEFAULT_STEPS)}]")
    parser.add_argument("--fanout-sizes", type=parse_sizes, default=[10, 100, 500],
                        metavar="10,100,500", help="fanout: the group sizes, sender included")
    parser.add_argument("--fanout-conns", type=int, default=1000,
                        help="fanout: connections per run, split into groups of each size")
    parser.add_argument("--fanout-deliveries", type=int, default=20000,
                        help="fanout: deliveries per second offered, for every peer and size")
    parser.add_argument("--fanout-shards", type=parse_counts, default=[0], metavar="1,0",
                        help="fanout: switchboard's shard counts, a row each (0: its default, "
                        "one per core; 1: one thread, as Bun's)")
    parser.add_argument("--fanout-ladder", type=parse_counts, default=[], metavar="DELIVERIES",
                        help="fanout: also climb these deliveries/s (comma-separated) with "
                        "groups of --fanout-ladder-size, every peer, up to the first rung not "
                        "sustained (a failed run, anything lost, or last-member p99 over "
                        "--fanout-p99-limit-ms)")
    parser.add_argument("--fanout-ladder-size", type=int, default=100)
    parser.add_argument("--server-cpus", type=parse_cpus, metavar="0-3",
                        help="run every server under taskset -c on these CPUs (switchboard's "
                        "shards, the relays' and the echo's threads follow them)")
    parser.add_argument("--client-cpus", type=parse_cpus, metavar="4-7",
                        help="run the load generator under taskset -c on these CPUs")
    parser.add_argument("--fanout-p99-limit-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    # The storm's measured time and its spike (which starts 2 s in).
    args.storm_duration, args.storm_spike = "10s", "3s"
    if args.quick:
        args.rates, args.idle_conns, args.duration, args.conns = "2000,4000", 500, "2s", 100
        args.storm_duration, args.storm_spike = "5s", "2s"
        args.fanout_sizes, args.fanout_conns, args.fanout_deliveries = [10, 100], 200, 2000
    try:
        args.rate_list = [int(r) for r in args.rates.split(",")]
    except ValueError:
        parser.error(f"--rates {args.rates!r}: a comma-separated list of whole msg/s")
    return args


def main():
    args = parse_args()
    PIN["server"], PIN["client"] = args.server_cpus, args.client_cpus
    rates = args.rate_list
    packages, _, bun = needs(args.peers)
    names = [name for name, _, _ in peers(Path("data"), args.peers)]
    if args.no_build:
        missing = missing_tools(args.peers)
        if missing:
            listed = "\n".join(f"  {path.relative_to(ROOT)}" for path in missing)
            build = "cargo build --release " + " ".join(f"-p {p}" for p in packages)
            print(f"compare.py: --no-build, but these are missing:\n{listed}\n"
                  f"build them with `{build}`" + (" and `.ci/setup-tools`" if bun else "")
                  + ", or run without --no-build", file=sys.stderr)
            # 2, as for bad flags: nothing ran.
            sys.exit(2)
    if args.dry_run:
        print("peers: " + ", ".join(names))
        if args.no_build:
            print("build: none (--no-build; every binary is there)")
        else:
            print("build: cargo build --release " + " ".join(f"-p {p}" for p in packages)
                  + ("; .ci/setup-tools" if bun else ""))
        print("steps: " + ",".join(args.steps))
        print(f"ladder: {args.rates} msg/s over {args.conns} connections, {args.duration} "
              f"each; idle: {args.idle_conns} connections")
        if PIN["server"] or PIN["client"]:
            print(f"pinned: servers to {PIN['server'] or 'any CPU'}, the load generator to "
                  f"{PIN['client'] or 'any CPU'}")
        if "scaling" in args.steps:
            print("scaling: thread counts " + ",".join(
                str(n) for n in thread_counts(cpu_count(PIN["server"]))))
        if "fanout" in args.steps:
            for size in args.fanout_sizes:
                groups, rate = fanout_plan(size, args.fanout_conns, args.fanout_deliveries)
                print(f"fanout: {groups} groups of {size} at {rate:.1f} msg/s in all, "
                      f"{args.fanout_deliveries} deliveries/s, {args.duration} each")
            print("fanout switchboard shards: " + ",".join(
                str(n) if n else "default" for n in args.fanout_shards))
            if args.fanout_ladder:
                print(f"fanout ladder: groups of {args.fanout_ladder_size} at "
                      + ",".join(str(d) for d in args.fanout_ladder) + " deliveries/s, up to "
                      f"last-member p99 {args.fanout_p99_limit_ms} ms")
        return

    if not args.no_build:
        run(["cargo", "build", "--release", *[a for p in packages for a in ("-p", p)]],
            cwd=ROOT)
        # Only bun comes from setup-tools; the rest of what it installs is for the tests.
        if bun:
            run([ROOT / ".ci/setup-tools"], cwd=ROOT, stdout=subprocess.DEVNULL)

    started = datetime.datetime.now(datetime.timezone.utc)
    work = Path(tempfile.mkdtemp(prefix="compare-"))
    steps = args.steps
    results = {name: {"name": name, "ladder": []} for name, _, _ in peers(work, args.peers)}
    for name, make, load in peers(work, args.peers):
        if "idle" not in steps and "ladder" not in steps:
            break
        print(f"\n== {name}", flush=True)
        figures = results[name]
        if "idle" in steps:
            peer = make().start()
            try:
                idle = loadgen(["idle", "--url", peer.url, "--conns", args.idle_conns,
                                "--procs", 2, "--source-ips", 4, "--server-pid",
                                peer.proc.pid, "--hold", "3s"], work / "idle.json")
                server = idle.get("server") or {}
                figures["idle_bytes_per_conn"] = server.get("rss_per_conn_bytes")
            finally:
                peer.stop()
        if "ladder" not in steps:
            continue
        peer = make().start()
        try:
            best = None
            for rate in rates:
                report = loadgen([load["scenario"], "--url", peer.url, "--conns", args.conns,
                                  "--rate", rate, "--duration", args.duration,
                                  "--warmup", "1s"], work / f"{load['scenario']}-{rate}.json")
                latency = report["latency_ms"].get(load["latency"], {})
                step = {
                    "rate": rate,
                    "acknowledged_per_s": report["throughput_per_second"].get(load["throughput"]),
                    "ack_p50": latency.get("p50"),
                    "ack_p99": latency.get("p99"),
                    "lost": report["counters"]["lost"],
                    "rejected": report["counters"]["rejected"],
                    "sustained": sustained(report, args.p99_limit_ms, load),
                }
                figures["ladder"].append(step)
                print(f"   {rate}/s offered: {step}", flush=True)
                if step["sustained"]:
                    best = step
                else:
                    break
            figures["max"] = best
        finally:
            peer.stop()

    # Latency at half of switchboard's (durability none) sustained rate, for every peer.
    reference = results["switchboard none"].get("max")
    half = max(1000, int(reference["rate"] / 2)) if reference else rates[0]
    for name, make, load in peers(work, args.peers):
        if "latency" not in steps:
            break
        peer = make().start()
        try:
            cpu_before = cpu_seconds(peer.proc.pid)
            report = loadgen([load["scenario"], "--url", peer.url, "--conns", args.conns,
                              "--rate", half, "--duration", args.duration, "--warmup", "1s"],
                             work / "half.json")
            cpu = cpu_seconds(peer.proc.pid) - cpu_before
            latency = report["latency_ms"]
            round_trip = latency.get(load["latency"], {})
            # For the echo, the echoes: it counts them as acknowledged.
            acknowledged = report["counters"]["acknowledged"]
            results[name]["half"] = {
                "rate": half,
                "ack_p50": round_trip.get("p50"), "ack_p99": round_trip.get("p99"),
                "delivery_p50": latency.get("delivery", {}).get("p50"),
                "delivery_p99": latency.get("delivery", {}).get("p99"),
                "lost": report["counters"]["lost"],
                # The server's CPU time over the whole run (connect, warmup, load, drain) per
                # message: what each message costs the server, whoever else shares the cores.
                "cpu_us_per_message": cpu * 1e6 / acknowledged if acknowledged else None,
                "send_lag_p99": latency["send_lag"].get("p99"),
            }
        finally:
            peer.stop()

    # A storm: the pairs load at a fifth of switchboard's sustained rate, with a spike to
    # twice that rate, and how each peer's latency recovers. The echo has no storm.
    storm_rate = max(200, int(reference["rate"] / 5)) if reference else rates[0] // 5
    for name, make, load in peers(work, args.peers):
        if "storm" not in steps:
            break
        if load is not PAIRS:
            continue
        peer = make().start()
        try:
            report = loadgen(["storm", "--url", peer.url, "--conns", args.conns,
                              "--rate", storm_rate, "--spike-factor", 10, "--spike-at", "2s",
                              "--spike", args.storm_spike, "--duration", args.storm_duration,
                              "--warmup", "1s"],
                             work / "storm.json")
            spike = report.get("spike") or {}
            # The per-second series start at second 0, the warmup's first.
            series = report["series"]["p99_ms"]["ack"]
            during = [p for second, p in enumerate(series)
                      if p is not None and spike.get("from_second", 0) <= second
                      < spike.get("until_second", 0)]
            c = report["counters"]
            results[name]["storm"] = {
                "rate": storm_rate, "spike_rate": spike.get("rate"),
                "baseline_ack_p99": spike.get("baseline_ack_p99_ms"),
                "spike_ack_p99_worst": max(during) if during else None,
                "recovery_seconds": report.get("recovery"),
                "acknowledged": c["acknowledged"], "sent": c["sent"], "lost": c["lost"],
                "rejected": c["rejected"],
            }
        finally:
            peer.stop()

    # Churn: receivers leave and come back while messages flow; the inbox must drain.
    for name, make, load in peers(work, args.peers):
        if "churn" not in steps:
            break
        if not name.startswith("switchboard"):
            continue
        peer = make().start()
        try:
            report = loadgen(["churn", "--url", peer.url, "--conns", args.conns,
                              "--rate", half, "--duration", args.duration, "--warmup", "1s"],
                             work / "churn.json")
            c = report["counters"]
            latency = report["latency_ms"]
            results[name]["churn"] = {
                "rate": half, "reconnects": c["reconnects"], "delivered": c["delivered"],
                "acknowledged": c["acknowledged"], "lost": c["lost"],
                "duplicates": c["duplicates"], "reordered": c["reordered"],
                "delivery_p50": latency.get("delivery", {}).get("p50"),
                "delivery_p99": latency.get("delivery", {}).get("p99"),
                "reconnect_p99": latency.get("reconnect", {}).get("p99"),
            }
        finally:
            peer.stop()

    # Fanout: groups of each size over the same connections, at one offered number of
    # deliveries per second, so that sizes and peers compare; then, if asked, the ladder of
    # deliveries/s. The limit has no groups.
    for name, make in fanout_peers(work, args) if "fanout" in steps else []:
        peer = make().start()
        # A shard count of its own is a row of the fanout tables only.
        figures = results.setdefault(name, {"name": name, "ladder": [], "step_only": True})
        try:
            figures["fanout"] = [fanout(peer, size, args.fanout_deliveries, args, work)
                                 for size in args.fanout_sizes]
            figures["fanout_ladder"] = fanout_ladder(peer, args, work)
        finally:
            peer.stop()

    # Scaling: each shard count against the tokio relay and the echo at as many threads.
    if "scaling" in steps:
        for name, figures in scaling(args, work):
            results[name] = figures

    write_results(results, args, started, ROOT / "bench" / "results")


def thread_counts(cpus):
    """1, 2, 4, ... up to `cpus`, and `cpus` itself."""
    counts, n = [], 1
    while n < cpus:
        counts.append(n)
        n *= 2
    return counts + [cpus]


def scaling(args, work):
    """--steps scaling: for each thread count up to the server's CPUs, switchboard none with
    that many shards, and the tokio relay and the io_uring echo (when in --peers) with that
    many threads, each up the ladder of --rates; (name, figures) per row."""
    wanted = {"switchboard none", OPTIONAL_PEERS["tokio"] if "tokio" in args.peers else None,
              LIMIT if "echo" in args.peers else None}
    rows = []
    for threads in thread_counts(cpu_count(PIN["server"])):
        for name, make, load in all_peers(work):
            if name not in wanted:
                continue
            label = f"{name}, {threads} thread" + ("s" if threads > 1 else "")
            peer = make()
            if name.startswith("switchboard"):
                peer = with_shards(peer, threads, label)
            else:
                peer.cmd += ["--threads", str(threads)]
                peer.name = label
            print(f"\n== scaling: {label}", flush=True)
            peer.start()
            try:
                rungs = scaling_ladder(peer, load, args, work)
            finally:
                peer.stop()
            best = ([rung for rung in rungs if rung["sustained"]] or [None])[-1]
            rows.append((label, {"name": label, "ladder": [], "step_only": True,
                                 "scaling": {"peer": name, "threads": threads,
                                             "best": best, "rungs": rungs}}))
    return rows


def scaling_ladder(peer, load, args, work):
    """The rungs of --rates against a started peer, with the server's CPU per message at
    each, up to and with the first not sustained."""
    rungs = []
    for rate in args.rate_list:
        cpu_before = cpu_seconds(peer.proc.pid)
        report = loadgen([load["scenario"], "--url", peer.url, "--conns", args.conns,
                          "--rate", rate, "--duration", args.duration, "--warmup", "1s"],
                         work / f"scaling-{load['scenario']}-{rate}.json")
        cpu = cpu_seconds(peer.proc.pid) - cpu_before
        latency = report["latency_ms"].get(load["latency"], {})
        done = report["counters"]["acknowledged"]
        rung = {
            "rate": rate,
            "per_s": report["throughput_per_second"].get(load["throughput"]),
            "p50": latency.get("p50"), "p99": latency.get("p99"),
            # Over the whole run (connect, warmup, load, drain), as the latency step counts it.
            "cpu_us_per_message": cpu * 1e6 / done if done else None,
            "sustained": sustained(report, args.p99_limit_ms, load),
        }
        print(f"   {rate}/s offered: {rung}", flush=True)
        rungs.append(rung)
        if not rung["sustained"]:
            break
    return rungs


def scaling_lines(everything, args):
    """The scaling step's table: a row per peer and thread count, with the ratios the
    per-core targets are about."""
    rows = [figures["scaling"] for figures in everything.values() if "scaling" in figures]
    if not rows:
        return []
    where = (f"server on CPUs {PIN['server']}" if PIN["server"] else "server unpinned") + ", " + (
        f"load generator on CPUs {PIN['client']}" if PIN["client"] else "load generator unpinned")
    lines = [
        "",
        f"Scaling ({where}): at each thread count, switchboard none with that many shards "
        "and the peers with that many threads, up the ladder of --rates; sustained as for "
        f"the ladder (nothing lost or refused, p99 <= {args.p99_limit_ms} ms):",
        "",
        "| threads | peer | sustained msg/s | per thread | CPU µs per message there | "
        "p50 / p99 there (ms) |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        best = row["best"] or {}
        rate = best.get("rate")
        lines.append(f"| {row['threads']} | {row['peer']} | {fmt(rate)} | "
                     f"{fmt(rate / row['threads']) if rate else 'n/a'} | "
                     f"{fmt(best.get('cpu_us_per_message'), 2)} | "
                     f"{fmt(best.get('p50'), 2)} / {fmt(best.get('p99'), 2)} |")
    lines += ["", "Every rung of the scaling step:", ""]
    for row in rows:
        for rung in row["rungs"]:
            threads = f"{row['threads']} thread" + ("s" if row["threads"] > 1 else "")
            lines.append(f"- {row['peer']}, {threads}: offered {fmt(rung['rate'])}"
                         f"/s, {fmt(rung['per_s'])}/s, p50 {fmt(rung['p50'], 2)} p99 "
                         f"{fmt(rung['p99'], 2)} ms, CPU {fmt(rung['cpu_us_per_message'], 2)} "
                         "µs per message" + ("" if rung["sustained"] else " (not sustained)"))
    return lines


def fanout_peers(data_dir, args):
    """(name, how to start it) for each peer of the fanout step: switchboard once per
    --fanout-shards count (0 keeps its default and its name), each on its own data
    directory, and every relay."""
    for name, make, load in peers(data_dir, args.peers):
        if load is not PAIRS:
            continue
        if not name.startswith("switchboard"):
            yield name, make
            continue
        for shards in args.fanout_shards:
            if shards == 0:
                yield name, make
            else:
                label = f"{name}, {shards} shard" + ("s" if shards > 1 else "")
                yield label, (lambda make=make, shards=shards, label=label:
                              with_shards(make(), shards, label))


def with_shards(peer, shards, label):
    """`peer` (switchboard, not started) run with `shards` shards, on a data directory of
    its own."""
    at = peer.cmd.index("--data-dir") + 1
    peer.cmd[at] = f"{peer.cmd[at]}-{shards}-shards"
    peer.cmd += ["--shards", str(shards)]
    peer.name = label
    return peer


def fanout_ladder(peer, args, work):
    """--fanout-ladder against a started peer: each rung's figures, up to and with the first
    not sustained."""
    rungs = []
    for deliveries in args.fanout_ladder:
        run = fanout(peer, args.fanout_ladder_size, deliveries, args, work)
        p99 = run.get("delivery_last_p99")
        run["sustained"] = bool(run["ok"] and run["lost"] == 0 and p99 is not None
                                and p99 <= args.fanout_p99_limit_ms)
        rungs.append(run)
        if not run["sustained"]:
            break
    return rungs


def fanout(peer, size, deliveries, args, work):
    """One fanout run against a started peer: groups of `size` over --fanout-conns
    connections at `deliveries` per second; its figures."""
    groups, rate = fanout_plan(size, args.fanout_conns, deliveries)
    # Switchboard creates its groups over its HTTP API; the relays have none, and join.
    if peer.http:
        mode = ["--group-mode", "server", "--http-addr", peer.http]
    else:
        mode = ["--group-mode", "join"]
    cpu_before = cpu_seconds(peer.proc.pid)
    slug = re.sub(r"[^a-z0-9]+", "-", peer.name)
    report = loadgen(["fanout", "--url", peer.url, *mode, "--groups", groups,
                      "--group-size", size, "--rate", f"{rate:.3f}",
                      "--duration", args.duration, "--warmup", "1s"],
                     work / f"fanout-{slug}-{size}-{deliveries}.json")
    cpu = cpu_seconds(peer.proc.pid) - cpu_before
    c = report["counters"]
    latency = report["latency_ms"]
    last = latency.get("delivery_last", {})
    each = latency.get("delivery", {})
    figures = {
        "group_size": size, "groups": groups, "rate": rate,
        "offered_deliveries_per_s": deliveries,
        "deliveries_per_s": report["throughput_per_second"].get("delivered"),
        # To the last member of each message: what the whole group waits for.
        "delivery_last_p50": last.get("p50") if last.get("count") else None,
        "delivery_last_p99": last.get("p99") if last.get("count") else None,
        "delivery_p99": each.get("p99") if each.get("count") else None,
        "sent": c["sent"], "acknowledged": c["acknowledged"], "delivered": c["delivered"],
        "lost": c["lost"], "duplicates": c["duplicates"], "reordered": c["reordered"],
        "groups_not_formed": c.get("setup_errors", 0),
        # The server's CPU time over the whole run (connect, forming the groups, warmup,
        # load, drain) per delivery, as the latency step counts it per message.
        "cpu_us_per_delivery": cpu * 1e6 / c["delivered"] if c["delivered"] else None,
        "ok": report["ok"], "failures": report["failures"],
        # Why, when it failed: the first error the load generator kept.
        "first_error": (report.get("error_samples") or [None])[0],
    }
    print(f"   fanout, groups of {size}, {deliveries}/s: {figures}", flush=True)
    return figures


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def plot(json_path, svg_path):
    """Draws the ladder of the results at `json_path` into `svg_path` with the load
    generator's SVG writer; True when it did. A plot that fails costs the run nothing: the
    table and the figures are written already."""
    cmd = [RELEASE / "switchboard-loadgen", "plot", json_path, "--svg", svg_path]
    print("+ " + " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd])
    if done.returncode != 0:
        print(f"compare.py: no plot (switchboard-loadgen plot exited {done.returncode})",
              file=sys.stderr)
    return done.returncode == 0


def write_results(everything, args, started, out):
    steps = args.steps
    results = {name: figures for name, figures in everything.items()
               if not figures.get("step_only")}
    ref = results["switchboard none"]
    ref_rate = (ref.get("max") or {}).get("rate")
    lines = [
        f"# Side-by-side run, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}. "
        + (f"Servers pinned to CPUs {PIN['server']}" if PIN["server"] else "Servers unpinned")
        + (f", the load generator to CPUs {PIN['client']}." if PIN["client"]
           else ", the load generator unpinned.")
        + ("" if PIN["server"] and PIN["client"] else
           " Server and load generator share the machine's cores."),
        "",
        "Command: `bench/compare.py " + " ".join(sys.argv[1:]) + "`; steps: "
        f"{', '.join(steps)}" + ("; pairs: "
        f"{args.conns} connections, {args.duration} measured after 1s of warmup, ladder "
        f"{args.rates} msg/s, sustained = nothing lost or refused and ack p99 <= "
        f"{args.p99_limit_ms} ms; " + ("the limit: `echo` with the same flags; "
                                        if LIMIT in results else "") + "idle: "
        f"{args.idle_conns} connections over 2 processes"
                                 if set(steps) - {"fanout"} else "") + ".",
        "",
    ]
    if "idle" in steps or "ladder" in steps:
        lines += [
            "| peer | idle bytes/conn | sustained msg/s | ratio to switchboard none | ack p99 there (ms) |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, figures in results.items():
            best = figures.get("max") or {}
            rate = best.get("rate")
            ratio = (ref_rate / rate) if (ref_rate and rate) else None
            lines.append(
                f"| {name} | {fmt(figures.get('idle_bytes_per_conn'))} | {fmt(rate)} | "
                f"{fmt(ratio, 2) + 'x' if ratio else 'n/a'} | {fmt(best.get('ack_p99'), 2)} |")
        lines += ["", "Ratio: switchboard none's sustained rate divided by the peer's." + (
            " The limit peer is a bare io_uring echo of the same frames (the `echo` scenario: each "
            "`send_message` sent back to its sender, no routing, no acknowledgement, no "
            "delivery to another connection), the machine's ceiling for this traffic; its "
            "ack is the echo." if LIMIT in results else ""), ""]
        limit_best = (results.get(LIMIT, {}).get("max") or {}).get("rate")
        if LIMIT not in results:
            pass  # --peers left the limit out: nothing to compare with.
        elif ref_rate and limit_best:
            # A peer that sustained the top rung might have sustained more: its true rate is
            # only known to be at least that.
            top = max(int(r) for r in args.rates.split(","))
            fraction = ref_rate / limit_best
            if ref_rate == top and limit_best == top:
                caveat = (" (both sustained the top of the ladder, so this says nothing: widen "
                          "--rates)")
            elif ref_rate == top:
                caveat = ", at least: switchboard none sustained the top of the ladder"
            elif limit_best == top:
                caveat = ", at most: the limit sustained the top of the ladder"
            else:
                caveat = ""
            lines += [
                f"Switchboard none sustains {fraction:.2f} ({fraction:.0%}) of the limit's "
                f"sustained rate: {fmt(ref_rate)} of {fmt(limit_best)} msg/s{caveat}.", ""]
        else:
            lines += [f"Switchboard none's fraction of the limit: n/a (sustained: switchboard "
                      f"none {fmt(ref_rate)}, limit {fmt(limit_best)} msg/s).", ""]
    if "latency" in steps:
        half = next(iter(results.values())).get("half", {}).get("rate")
        lines += [
            f"Latency at {fmt(half)} msg/s (half of switchboard none's sustained rate), ms:",
            "",
            "| peer | ack p50 | ack p99 | delivery p50 | delivery p99 | lost | server CPU µs per message | ratio to switchboard none | loadgen send lag p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        ref_cpu = ref.get("half", {}).get("cpu_us_per_message")
        for name, figures in results.items():
            h = figures.get("half", {})
            cpu = h.get("cpu_us_per_message")
            cpu_ratio = (cpu / ref_cpu) if (cpu and ref_cpu) else None
            lines.append(f"| {name} | {fmt(h.get('ack_p50'), 2)} | {fmt(h.get('ack_p99'), 2)} | "
                         f"{fmt(h.get('delivery_p50'), 2)} | {fmt(h.get('delivery_p99'), 2)} | "
                         f"{fmt(h.get('lost'))} | {fmt(cpu, 1)} | "
                         f"{fmt(cpu_ratio, 2) + 'x' if cpu_ratio else 'n/a'} | "
                         f"{fmt(h.get('send_lag_p99'), 2)} |")
        lines += ["", "CPU ratio: the peer's server CPU per message divided by switchboard none's "
                  "(above 1: the peer spends more per message). The load generator's send lag is "
                  "its own delay in sending: when it grows, the client, not the server, limits "
                  "the run. The limit's ack is its echo and its CPU is per echoed message; it has "
                  "no delivery."]
    if "storm" in steps:
        storm = next((f["storm"] for f in results.values() if "storm" in f), {})
        lines += [
            "",
            f"Storm: {fmt(storm.get('rate'))} msg/s with a spike to {fmt(storm.get('spike_rate'))} "
            f"msg/s for {args.storm_spike} from 2 s into {args.storm_duration} measured, ms:",
            "",
            "| peer | ack p99 before | worst ack p99 in the spike | seconds to recover | "
            "acknowledged of sent | lost | refused |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, figures in results.items():
            st = figures.get("storm")
            if st is None:
                lines.append(f"| {name} | n/a | n/a | n/a | n/a | n/a | n/a |")
                continue
            recovery = st.get("recovery_seconds")
            lines.append(f"| {name} | {fmt(st.get('baseline_ack_p99'), 2)} | "
                         f"{fmt(st.get('spike_ack_p99_worst'), 2)} | "
                         f"{fmt(recovery, 0) if recovery is not None else 'not in the run'} | "
                         f"{fmt(st['acknowledged'])} of {fmt(st['sent'])} | {fmt(st['lost'])} | "
                         f"{fmt(st['rejected'])} |")
        lines += ["", "Recovery: the seconds after the spike until the ack p99 of a second is back "
                  "under twice its level before the spike (0: at once). The limit is an echo and "
                  "has no storm."]
    if "churn" in steps:
        churn = next((f["churn"] for f in results.values() if "churn" in f), {})
        lines += [
            "",
            f"Churn: {fmt(churn.get('rate'))} msg/s while receivers disconnect and reconnect, ms:",
            "",
            "| peer | reconnects | delivered of acknowledged | lost | duplicates | reordered | "
            "delivery p50 | delivery p99 | reconnect p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, figures in results.items():
            ch = figures.get("churn")
            if ch is None:
                continue
            lines.append(f"| {name} | {fmt(ch['reconnects'])} | {fmt(ch['delivered'])} of "
                         f"{fmt(ch['acknowledged'])} | {fmt(ch['lost'])} | {fmt(ch['duplicates'])} "
                         f"| {fmt(ch['reordered'])} | {fmt(ch.get('delivery_p50'), 2)} | "
                         f"{fmt(ch.get('delivery_p99'), 2)} | {fmt(ch.get('reconnect_p99'), 2)} |")
        lines += ["", "Churn runs against switchboard only: the relays keep no inbox and drop "
                  "messages for a user who is away. Delivery latency includes the time a receiver "
                  "was away."]
    if "fanout" in steps:
        lines += fanout_lines(everything, args)
    if "scaling" in steps:
        lines += scaling_lines(everything, args)
    if "ladder" in steps:
        lines += ["", "Every rung of the ladder:", ""]
        for name, figures in results.items():
            for step in figures["ladder"]:
                lines.append(f"- {name}: offered {fmt(step['rate'])}/s, acknowledged "
                             f"{fmt(step['acknowledged_per_s'])}/s, ack p50 "
                             f"{fmt(step['ack_p50'], 2)} p99 {fmt(step['ack_p99'], 2)} ms, "
                             f"lost {step['lost']}, refused {step['rejected']}")
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y-%m-%d-%H%M}"
    json_path, svg_path, path = out / f"{stem}.json", out / f"{stem}.svg", out / f"{stem}.md"
    json_path.write_text(json.dumps(everything, indent=2) + "\n")
    # The plot is of the ladder: without it there is nothing to draw.
    if "ladder" in steps and plot(json_path, svg_path):
        lines += ["", f"![Acknowledged msg/s and ack p99 at each rung, per peer]({svg_path.name})"]
    # Sections open with a blank line, which doubles one where the one before ended with one.
    lines = [line for n, line in enumerate(lines) if line or n == 0 or lines[n - 1]]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    path.write_text(text)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"written to {shown}" + (f" and {svg_path.name}" if svg_path.exists() else ""))


def fanout_lines(results, args):
    """The fanout step's table: a row per peer and group size."""
    lines = [
        "",
        f"Fanout: {fmt(args.fanout_deliveries)} deliveries/s offered over "
        f"{fmt(args.fanout_conns)} connections in groups of "
        f"{', '.join(str(size) for size in args.fanout_sizes)} (a sender and size - 1 members "
        f"each; the message rate is the deliveries over size - 1), {args.duration} measured "
        "after 1s of warmup, ms:",
        "",
        "| peer | group size | groups | msg/s | deliveries/s | delivery p50 (last member) | "
        "delivery p99 (last member) | lost | duplicates | server CPU µs per delivery | "
        "ratio to switchboard none |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ref = {run["group_size"]: run.get("cpu_us_per_delivery")
           for run in results["switchboard none"].get("fanout", [])}
    failed = []
    for name, figures in results.items():
        for run in figures.get("fanout", []):
            cpu = run.get("cpu_us_per_delivery")
            ref_cpu = ref.get(run["group_size"])
            cpu_ratio = (cpu / ref_cpu) if (cpu and ref_cpu) else None
            lines.append(
                f"| {name} | {run['group_size']} | {run['groups']} | {fmt(run['rate'], 1)} | "
                f"{fmt(run.get('deliveries_per_s'))} | {fmt(run.get('delivery_last_p50'), 2)} | "
                f"{fmt(run.get('delivery_last_p99'), 2)} | {fmt(run['lost'])} | "
                f"{fmt(run['duplicates'])} | {fmt(cpu, 2)} | "
                f"{fmt(cpu_ratio, 2) + 'x' if cpu_ratio else 'n/a'} |")
            if not run.get("ok"):
                why = run.get("failures") or ["failed"]
                if run.get("first_error"):
                    why = [*why, f"first error: {run['first_error']}"]
                failed.append(f"- {name}, groups of {run['group_size']}: " + "; ".join(why))
    lines += ["", "Delivery latency from the intended send to the last member of the group to "
              "get the message: what the whole group waits for. Lost: deliveries of "
              "acknowledged messages that a member never got by the end of the drain. CPU "
              "ratio: the peer's server CPU per delivery divided by switchboard none's at the "
              "same group size. Switchboard forms its groups with POST /v1/groups, the relays "
              "with their own `join`; the limit has no groups."]
    if failed:
        lines += ["", "Fanout runs that failed:", "", *failed]
    if args.fanout_ladder:
        lines += fanout_ladder_lines(results, args)
    return lines


def fanout_ladder_lines(results, args):
    """The fanout ladder's table: per peer, the highest deliveries/s sustained, then every
    rung."""
    lines = [
        "",
        f"Fanout ladder: groups of {args.fanout_ladder_size} over {fmt(args.fanout_conns)} "
        f"connections at {', '.join(fmt(d) for d in args.fanout_ladder)} deliveries/s offered, "
        f"up to the first rung not sustained (a failed run, anything lost, or the last "
        f"member's delivery p99 over {fmt(args.fanout_p99_limit_ms)} ms):",
        "",
        "| peer | highest sustained deliveries/s | delivery p99 there (last member, ms) | "
        "server CPU µs per delivery there |",
        "|---|---:|---:|---:|",
    ]
    rungs = []
    for name, figures in results.items():
        ladder = figures.get("fanout_ladder") or []
        best = ([run for run in ladder if run["sustained"]] or [None])[-1] or {}
        if ladder:
            lines.append(f"| {name} | {fmt(best.get('offered_deliveries_per_s'))} | "
                         f"{fmt(best.get('delivery_last_p99'), 2)} | "
                         f"{fmt(best.get('cpu_us_per_delivery'), 2)} |")
        for run in ladder:
            rungs.append(f"- {name}: offered {fmt(run['offered_deliveries_per_s'])}/s, "
                         f"delivered {fmt(run.get('deliveries_per_s'))}/s, last-member p50 "
                         f"{fmt(run.get('delivery_last_p50'), 2)} p99 "
                         f"{fmt(run.get('delivery_last_p99'), 2)} ms, lost {fmt(run['lost'])}, "
                         f"CPU {fmt(run.get('cpu_us_per_delivery'), 2)} µs per delivery"
                         + ("" if run["sustained"] else " (not sustained)"))
    return lines + ["", "Every rung of the fanout ladder:", "", *rungs]


if __name__ == "__main__":
    main()
