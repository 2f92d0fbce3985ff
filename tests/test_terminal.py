"""The terminal report: histograms with axes, plain ASCII, every line within the width, files named
in per-sample rows, inputs summarized, progress passes, path completion and the `-o -` terminal refusal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from normcli import render
from normcli.cli import cli
from conftest import write_image

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120


def run_at(width: int, *args, ok: bool = True):
    """The CLI at a terminal `width` (Click's help and rich's console both follow it)."""
    result = CliRunner(env={"COLUMNS": str(width), "NO_COLOR": "1"}).invoke(
        cli, [str(a) for a in args], terminal_width=width)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if ok:
        assert result.exit_code == 0, result.stderr
    return result


def subprocess_env(**extra) -> dict:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, "NO_COLOR": "1", "COLUMNS": "80", **extra}


def normcli(*args, cwd, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "normcli", *map(str, args)], cwd=cwd, capture_output=True,
                          timeout=TIMEOUT, env=subprocess_env(**extra))


@pytest.fixture
def data(tmp_path) -> Path:
    from normcli.tutorial import tutorial_dataset

    path = tmp_path / "data.npy"
    np.save(path, tutorial_dataset(n=40, size=8, seed=1))
    return path


# -- histograms -----------------------------------------------------------------------
def caption_and_axis(out: str, label: str) -> tuple[str, str]:
    """The caption after `label:` and the axis line (the last line of that chart)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{label}:"))
    return lines[start].strip(), lines[start + render.HISTOGRAM_HEIGHT + 1].strip()


@pytest.mark.parametrize("bins", [7, 30])
def test_histogram_axis_shows_the_low_middle_and_high_edges(data, bins):
    doc = json.loads(run_at(80, "stats", data, "--per", "global", "--bins", bins, "--format", "json").stdout)
    histogram = doc["rows"][0]["histogram"]
    edges, counts = histogram["edges"], histogram["counts"]
    caption, axis = caption_and_axis(run_at(80, "stats", data, "--per", "global", "--bins", bins).stdout,
                                     "global all")
    low, middle, high = (render.fmt(edges[i], 4) for i in (0, bins // 2, bins))
    assert axis.split() == [low, middle, high]
    assert caption == f"global all: {bins} bins, {sum(counts):,} values, tallest bar {max(counts):,}"


@pytest.mark.parametrize("width, bins", [(80, 100), (80, 256), (120, 256), (80, 997)])
def test_more_bins_than_columns_are_merged_for_display_only(data, width, bins):
    doc = json.loads(run_at(width, "stats", data, "--per", "global", "--bins", bins, "--format", "json").stdout)
    counts = np.array(doc["rows"][0]["histogram"]["counts"])
    assert len(counts) == bins  # the JSON keeps the exact bins
    out = run_at(width, "stats", data, "--per", "global", "--bins", bins).stdout
    caption, _ = caption_and_axis(out, "global all")
    shown, tallest = map(int, re.fullmatch(rf"global all: {bins} bins shown as (\d+), [\d,]+ values, "
                                           r"tallest bar ([\d,]+)", caption).group(1, 2))
    assert shown <= width - 4
    run = -(-bins // shown)  # each displayed bar is a run of neighbouring bins, the last maybe shorter
    merged = [counts[i:i + run].sum() for i in range(0, bins, run)]
    assert len(merged) == shown and max(merged) == int(str(tallest).replace(",", ""))
    assert all(len(line) <= width for line in out.splitlines())


def test_display_counts_keep_every_value():
    counts = np.arange(1, 101)
    for columns in (1, 3, 39, 99, 100, 200):
        shown = render.display_counts(counts, columns)
        assert len(shown) <= columns and shown.sum() == counts.sum()


# -- plain ASCII ------------------------------------------------------------------------
ASCII_CASES = [
    ["stats", "{data}"],
    ["stats", "{data}", "--bins", "0"],
    ["stats", "{data}", "--per", "pixel", "--bins", "100"],
    ["stats", "{images}", "--per", "sample"],
    ["normalize", "{data}", "-o", "out.npy"],
    ["batchnorm", "{data}", "-o", "bn.npy", "-b", "8"],
    ["sample", "s.npy", "-n", "2"],
    ["demo", "--bins", "10"],
    ["stats", "--help"],
]


@pytest.fixture
def named_inputs(tmp_path, data, rng):
    images = tmp_path / "images"
    for name in ("a/x.png", "b/y.png"):
        write_image(images / name, rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    return {"data": data, "images": images}


@pytest.mark.parametrize("args", ASCII_CASES, ids=lambda a: " ".join(a[:4]))
def test_an_ascii_terminal_gets_ascii_not_a_traceback(tmp_path, named_inputs, args):
    args = [a.format(**named_inputs) for a in args]
    result = normcli(*args, cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr.decode()
    result.stdout.decode("ascii")
    result.stderr.decode("ascii")
    assert b"tallest bar" not in result.stdout or b"#" in result.stdout  # histograms drawn in '#'


def test_csv_is_utf8_data_even_for_an_ascii_terminal(tmp_path, rng):
    folder = tmp_path / "images"
    write_image(folder / "café.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    result = normcli("stats", folder, "--per", "sample", "--format", "csv", cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode("utf-8").splitlines()[1].split(",")[:2] == ["0", "café.png"]
    table = normcli("stats", folder, "--per", "sample", cwd=tmp_path, PYTHONIOENCODING="ascii")
    assert table.returncode == 0 and r"caf\xc3\xa9.png" in table.stdout.decode("ascii")  # its bytes, not '?'


@pytest.mark.parametrize("args", [a for a in ASCII_CASES if a[0] in ("stats", "demo") and "--help" not in a],
                         ids=lambda a: " ".join(a[:4]))
def test_ascii_option_prints_only_ascii(tmp_path, named_inputs, args):
    args = [a.format(**named_inputs) for a in args]
    out = run_at(80, *args, "--ascii").stdout
    out.encode("ascii")
    if "--bins" not in args or args[args.index("--bins") + 1] != "0":
        assert "#" in out  # the bars are there, in '#'


def test_the_same_report_in_unicode_has_blocks(data):
    out = run_at(80, "stats", data).stdout
    assert "█" in out and "×" in out


# -- widths -----------------------------------------------------------------------------
WIDE_CASES = [
    ["stats", "{data}", "--bins", "256"],
    ["stats", "{data}", "--per", "pixel", "--bins", "100"],
    ["stats", "{data}", "--per", "sample", "--bins", "40"],
    ["stats", "{images}", "--per", "sample", "--bins", "300"],
    ["stats", "{many}", "--per", "sample"],
    ["standardize", "{data}", "-o", "z.npy", "--per", "pixel", "--bins", "64", "-f"],
    ["batchnorm", "{data}", "-o", "bn.npy", "-b", "3", "-f"],
    ["demo"],
]


@pytest.fixture
def long_named(tmp_path, named_inputs):
    """Array inputs with long names, so that a per-sample table has a long file column."""
    folder = tmp_path / "a_rather_long_folder_name_for_shards" / "and_another_level_of_them"
    folder.mkdir(parents=True)
    data = np.load(named_inputs["data"])
    names = []
    for k in range(4):
        names.append(folder / f"shard_{k:03d}_of_the_training_set.npy")
        np.save(names[-1], data[k * 10:(k + 1) * 10])
    return {**named_inputs, "many": names}


@pytest.mark.parametrize("width", [80, 120, 200])
@pytest.mark.parametrize("args", WIDE_CASES, ids=lambda a: " ".join(a[:4]))
def test_no_line_is_wider_than_the_terminal(chdir, long_named, width, args):
    expanded = []
    for a in args:
        value = a.format(**{k: v for k, v in long_named.items() if k != "many"}) if a != "{many}" else None
        expanded.extend(long_named["many"] if value is None else [value])
    out = run_at(width, *expanded).stdout
    too_wide = [line for line in out.splitlines() if len(line) > width]
    assert not too_wide, "\n".join(too_wide)


def test_a_narrow_table_leaves_columns_to_json_and_says_so(data):
    from normcli.passes import measure
    from normcli.sources import open_dataset

    with open_dataset([str(data)]) as dataset:
        stats = measure(dataset, "pixel", bins=0)
    wide = render.stats_table(stats, 0, 200)
    narrow = render.stats_table(stats, 0, 40)
    assert wide.header == ["key", "count", "mean", "std", "var", "min", "max"] and not wide.note
    assert "std" not in narrow.header and "std" in narrow.note
    assert narrow.width() <= 40 or narrow.header == ["key", "mean", "var", "min", "max"]
    # the pixel scope shows the lowest and highest value of each statistic over the positions
    var = stats.moments.var(0)
    assert wide.rows[0][wide.header.index("var")] == render.fmt(var.min().item())
    assert wide.rows[1][wide.header.index("var")] == render.fmt(var.max().item())


# -- rows that name their files (issue 11.8) --------------------------------------------------
def test_per_sample_rows_of_images_carry_their_relative_path(image_tree):
    names = ["a/0.png", "a/1.png", "b/2.png", "b/c/3.png"]
    doc = json.loads(run_at(80, "stats", image_tree, "--per", "sample", "--format", "json").stdout)
    assert [row["file"] for row in doc["rows"]] == names
    assert [row["key"] for row in doc["rows"]] == ["0", "1", "2", "3"]
    csv_lines = run_at(80, "stats", image_tree, "--per", "sample", "--format", "csv").stdout.splitlines()
    assert csv_lines[0].split(",")[:2] == ["key", "file"]
    assert [line.split(",")[1] for line in csv_lines[1:]] == names
    table = run_at(200, "stats", image_tree, "--per", "sample", "--bins", "0").stdout.splitlines()
    assert table[1].split()[:2] == ["key", "file"]
    assert [line.split()[1] for line in table[2:6]] == names


def test_other_inputs_are_named_as_given_arrays_only_when_there_are_several(tmp_path, data):
    one = json.loads(run_at(80, "stats", data, "--per", "sample", "--format", "json").stdout)
    assert "file" not in one["rows"][0]
    other = tmp_path / "other.npy"
    np.save(other, np.load(data)[:3])
    two = json.loads(run_at(80, "stats", data, other, "--per", "sample", "--format", "json").stdout)
    assert [row["file"] for row in two["rows"]] == [str(data)] * 40 + [str(other)] * 3
    assert [row["key"] for row in two["rows"]] == [str(k) for k in range(43)]
    images = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"]
    for image in images:
        write_image(image, np.zeros((3, 2), np.uint8))
    doc = json.loads(run_at(80, "stats", *images, "--per", "sample", "--format", "json").stdout)
    assert [row["file"] for row in doc["rows"]] == [str(image) for image in images]  # as given: findable
    channel = json.loads(run_at(80, "stats", data, other, "--format", "json").stdout)
    assert "file" not in channel["rows"][0]


# -- many inputs ----------------------------------------------------------------------------
def test_many_inputs_are_summarized_in_headers_and_titles_but_listed_in_json(chdir, data):
    folder = Path("shards")
    folder.mkdir()
    shards = []
    for k in range(20):
        shards.append(folder / f"s{k:02d}.npy")
        np.save(shards[-1], np.load(data)[k:k + 1])
    out = run_at(80, "stats", *shards, "--bins", "0").stdout
    assert out.splitlines()[0].startswith(f"20 files from {folder}{os.sep}: 20 samples")
    doc = json.loads(run_at(80, "stats", *shards, "--format", "json", "--bins", "0").stdout)
    assert doc["inputs"] == [str(s) for s in shards]
    out = run_at(80, "normalize", *shards, data, "-o", "n.npy", "--bins", "0").stdout
    assert out.splitlines()[0] == f"before: {shards[0]}, {shards[1]} and 19 more"


def test_inputs_text():
    assert render.inputs_text(["a.npy", "b.npy"]) == "a.npy, b.npy"
    assert render.inputs_text([f"d/{k}.png" for k in range(1000)]) == f"1,000 files from d{os.sep}"
    assert render.inputs_text(["a.npy", "b.npy", "c/c.npy", "d.npy"]) == "a.npy, b.npy and 2 more"


# -- progress ---------------------------------------------------------------------------------
class RecordedProgress:
    def __init__(self):
        self.phases: list[list] = []  # [name, total, samples advanced, bytes advanced]

    def phase(self, name: str, total: int) -> None:
        self.phases.append([name, total, 0, 0])

    def advance(self, samples: int, nbytes: int = 0) -> None:
        self.phases[-1][2] += samples
        self.phases[-1][3] += nbytes


def test_each_pass_is_named_and_counts_its_samples_and_bytes(tmp_path, data):
    from helpers import transform
    from normcli.passes import measure
    from normcli.plans import ScalePlan
    from normcli.sources import open_dataset
    from normcli.transforms import zscore

    array = np.load(data)
    n = len(array)
    with open_dataset([str(data)]) as dataset:
        progress = RecordedProgress()
        measure(dataset, "channel", bins=10, progress=progress)
        assert progress.phases == [["measuring", n, n, array.nbytes], ["histograms", n, n, array.nbytes]]
        progress = RecordedProgress()
        transform(dataset, ScalePlan("global", lambda m: zscore(m)), str(tmp_path / "z.npy"), progress=progress)
        assert progress.phases == [["fitting", n, n, array.nbytes], ["writing", n, n, array.nbytes]]


class EachAdvance(RecordedProgress):
    def __init__(self):
        super().__init__()
        self.advances: dict[str, list[int]] = {}  # each advance() of each pass, in the order heard

    def phase(self, name: str, total: int) -> None:
        super().phase(name, total)
        self.advances[name] = []

    def advance(self, samples: int, nbytes: int = 0) -> None:
        super().advance(samples, nbytes)
        self.advances[self.phases[-1][0]].append(samples)


@pytest.fixture
def mixed_sizes(tmp_path) -> Path:
    """A folder whose images alternate between two sizes: one block an image (a block is one array),
    so that 200 blocks go to tasks of several blocks (reduction.task_blocks)."""
    rng = np.random.default_rng(3)
    for i in range(200):
        write_image(tmp_path / "mixed" / f"{i:03d}.png", rng.integers(0, 256, (8, 8 + i % 2), dtype=np.uint8))
    return tmp_path / "mixed"


@pytest.mark.parametrize("name", ["threads", "processes"])
def test_progress_is_told_of_each_block_on_threads_and_of_each_task_elsewhere(tmp_path, mixed_sizes, name):
    from helpers import transform
    from normcli.engine import open_engine
    from normcli.passes import measure
    from normcli.plans import ScalePlan
    from normcli.reduction import task_blocks
    from normcli.sources import open_dataset
    from normcli.transforms import minmax

    with open_dataset([str(mixed_sizes)]) as dataset, open_engine(name, workers=2) as engine:
        blocks = [block.count for block in dataset.blocks()]
        size = task_blocks(engine, len(blocks))
        tasks = [sum(blocks[i:i + size]) for i in range(0, len(blocks), size)]
        assert len(blocks) == 200 and len(tasks) < len(blocks) / 2  # tasks of several blocks
        progress = EachAdvance()
        measure(dataset, "global", bins=10, engine=engine, progress=progress)
        transform(dataset, ScalePlan("global", minmax), str(tmp_path / "out"), engine=engine, progress=progress)
    assert [p[:3] for p in progress.phases] == [[n, 200, 200] for n in ("measuring", "fitting", "writing")]
    for heard in progress.advances.values():
        if name == "threads":  # every block as it completes, not its run when the driver takes it
            assert sorted(heard) == sorted(blocks)
        else:  # a process pool's tasks carry several blocks, each told as it ends
            assert sum(heard) == 200 and 1 < len(heard) <= len(tasks)


@pytest.mark.parametrize("name, workers", [("threads", 1), ("threads", 3), ("processes", 2), ("dask", 2)])
def test_map_tells_each_item_done_once_and_before_its_result(name, workers):
    from normcli.engine import open_engine

    told: list[int] = []
    with open_engine(name, workers=workers) as engine:
        for index, result in enumerate(engine.map(abs, [-i for i in range(100)], told.append)):
            assert result == index and index in told
    assert sorted(told) == list(range(100))


def test_no_progress_bar_when_quiet_or_in_a_pipe():
    assert render.progress_display(quiet=False, terminal=False) is None  # a pipe
    assert render.progress_display(quiet=True, terminal=True) is None
    assert isinstance(render.progress_display(quiet=False, terminal=True), render.ProgressDisplay)


def test_no_bar_until_the_work_has_taken_half_a_second():
    now = [0.0]
    display = render.ProgressDisplay(clock=lambda: now[0])
    display.phase("measuring", 100)
    now[0] = 0.4
    display.advance(50)
    assert not display.visible
    display.phase("writing", 100)  # the delay counts from the first pass, not from each
    now[0] = 0.5
    display.advance(10)
    assert display.visible
    display.close()


def test_progress_on_a_terminal_names_the_pass(tmp_path, data):
    """A real pseudo-terminal as stderr; the bar appears only after the delay, so make the delay 0."""
    script = ("from normcli.render import ProgressDisplay; import time\n"
              "p = ProgressDisplay(delay=0)\n"
              "p.phase('measuring', 10)\n"
              "for _ in range(10): p.advance(1, 1000); time.sleep(0.02)\n"
              "p.phase('writing', 10); p.advance(10, 0); time.sleep(0.2); p.close()\n")
    err = run_in_pty([sys.executable, "-c", script], tmp_path, stdin_too=False)
    assert "measuring" in err and "/10" in err and "MB/s" in err and "writing" in err


# -- completion -------------------------------------------------------------------------------
def complete(words: str, cwd) -> list[str]:
    """Click's bash completion protocol, as the script from `_NORMCLI_COMPLETE=bash_source` runs it."""
    cword = len(words.split()) if words.endswith(" ") else len(words.split()) - 1
    result = subprocess.run([sys.executable, "-m", "normcli"], cwd=cwd, capture_output=True, timeout=TIMEOUT,
                            env=subprocess_env(_NORMCLI_COMPLETE="bash_complete", COMP_WORDS=words,
                                               COMP_CWORD=str(cword)))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


@pytest.mark.parametrize("words", [
    "normcli stats ", "normcli stats da", "normcli stats a.npy b", "normcli normalize x.npy -o ",
    "normcli stats x.npy --save ", "normcli stats x.npy --save-stats ", "normcli standardize x.npy --stats-from ",
    "normcli standardize x.npy -o z.npy --save-stats ", "normcli batchnorm x.npy -b 2 -o ",
    "normcli merge-stats ", "normcli merge-stats a.json -o ", "normcli sample ",
])
def test_paths_complete_as_files(tmp_path, words):
    incomplete = "" if words.endswith(" ") else words.split()[-1]
    assert complete(words, tmp_path) == [f"file,{incomplete}"]  # the shell then completes file names


def test_other_values_complete_as_their_choices(tmp_path):
    assert complete("normcli stats x.npy --per ", tmp_path) == [f"plain,{s}" for s in
                                                                ("global", "channel", "sample", "pixel")]
    assert "plain,stats" in complete("normcli ", tmp_path)


# -- -o - on a terminal -------------------------------------------------------------------------
def run_in_pty(argv, cwd, *, stdin_too: bool = True, extra_env=None) -> str:
    """Run `argv` with stdout (and stderr) on a pseudo-terminal; return what it printed there."""
    import pty

    leader, follower = pty.openpty()
    env = subprocess_env(**{"COLUMNS": "100", **(extra_env or {})})
    process = subprocess.Popen(argv, cwd=cwd, stdout=follower if stdin_too else subprocess.DEVNULL,
                               stderr=follower, stdin=subprocess.DEVNULL, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the pty's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    process.wait(TIMEOUT)
    run_in_pty.returncode = process.returncode
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("args", [["standardize", "{data}", "-o", "-"], ["sample", "-", "-n", "2"]])
def test_binary_output_to_a_terminal_is_refused_with_a_hint(tmp_path, data, args):
    argv = [sys.executable, "-m", "normcli", *(a.format(data=data) for a in args)]
    shown = run_in_pty(argv, tmp_path)
    assert run_in_pty.returncode == 2
    lines = shown.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to write .npy data to a terminal")
    assert "redirect" in lines[0] and len(lines[0]) <= 80
    assert [p.name for p in tmp_path.iterdir()] == ["data.npy"]  # nothing written


def test_binary_output_to_a_pipe_still_works(tmp_path, data):
    result = normcli("standardize", data, "-o", "-", "--quiet", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(b"\x93NUMPY")


# -- help, version, --debug, --save ---------------------------------------------------------
def test_version_short_option():
    from normcli import __version__

    assert run_at(80, "-V").stdout.strip() == f"normcli, version {__version__}"


def test_debug_after_the_command_shows_the_traceback(tmp_path):
    missing = tmp_path / "missing.npy"
    plain = run_at(80, "stats", missing, ok=False)
    assert plain.exit_code == 1 and plain.stderr.startswith("error: ")
    for args in (["stats", missing, "--debug"], ["--debug", "stats", missing]):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 1 and type(result.exception).__name__ == "InputError"
    shown = normcli("stats", missing, "--debug", cwd=tmp_path)
    assert shown.returncode == 1 and b"Traceback" in shown.stderr


@pytest.mark.parametrize("option", ["--save", "--save-stats"])
def test_save_and_save_stats_are_one_option(chdir, data, option):
    run_at(80, "stats", data, "--per", "global", option, "s.json", "--quiet")
    run_at(80, "standardize", data, "-o", "z.npy", option, "z.json", "--quiet")
    run_at(80, "batchnorm", data, "-o", "b.npy", "-b", "8", option, "b.json", "--quiet")
    assert {json.loads(Path(f).read_text())["per"] for f in ("s.json", "z.json", "b.json")} == {"global",
                                                                                                "channel"}


# -- the width of a saved report (issue 24.2) ------------------------------------------------------
def test_a_report_saved_from_a_narrow_terminal_is_80_columns_wide(tmp_path, data):
    """stdin and stderr on a real 40-column pty, stdout to a file: the file gets the 80 columns of a
    report that is not on a terminal, every column kept; COLUMNS still decides when it is set."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 40, 0, 0))
    env = {k: v for k, v in subprocess_env().items() if k not in ("COLUMNS", "LINES")}
    argv = [sys.executable, "-m", "normcli", "stats", str(data), "--per", "sample", "--bins", "0"]
    widths = {}
    for name, extra in (("plain", {}), ("columns", {"COLUMNS": "50"})):
        with open(tmp_path / f"{name}.txt", "wb") as out:
            subprocess.run(argv, stdin=follower, stdout=out, stderr=follower, env={**env, **extra},
                           timeout=TIMEOUT, check=True)
        lines = (tmp_path / f"{name}.txt").read_text().splitlines()
        widths[name] = max(len(line) for line in lines)
    os.close(follower)
    os.close(leader)
    wide = run_at(80, "stats", data, "--per", "sample", "--bins", "0").stdout
    assert (tmp_path / "plain.txt").read_text() == wide
    header = next(line for line in wide.splitlines() if line.startswith("key"))
    assert header.split() == ["key", "count", "mean", "std", "var", "min", "max"]
    assert 40 < widths["plain"] <= 80 and widths["columns"] <= 50


# -- file names as the terminal can show them (issue 24.8) -------------------------------------------
@pytest.mark.parametrize("name, extra, shown", [
    (b"bad\xff.npy", {}, r"bad\xff.npy"),  # not UTF-8: the byte, not Python's \udcff
    ("manquant_é.npy".encode(), {}, "manquant_é.npy"),
    ("manquant_é.npy".encode(), {"PYTHONIOENCODING": "ascii"}, r"manquant_\xc3\xa9.npy"),
    ("manquant_é.npy".encode(), {"LC_ALL": "C", "PYTHONUTF8": "0"}, r"manquant_\xc3\xa9.npy"),
])
def test_names_are_shown_alike_in_errors_and_tables(tmp_path, data, name, extra, shown):
    """The same spelling in the error line (a missing file) and in the table (the file, present)."""
    argv = [os.fsencode(sys.executable), b"-m", b"normcli", b"stats", name]
    env = {k: v for k, v in subprocess_env(**extra).items() if not k.startswith("LC_") or k in extra}
    missing = subprocess.run(argv, cwd=tmp_path, capture_output=True, timeout=TIMEOUT, env=env)
    assert missing.returncode == 1
    assert missing.stderr.decode("utf-8").splitlines() == [f"error: no such file or folder ({shown})"]
    (tmp_path / os.fsdecode(name)).write_bytes(data.read_bytes())
    table = subprocess.run([*argv, str(data).encode(), b"--per", b"sample", b"--bins", b"0"], cwd=tmp_path,
                           capture_output=True, timeout=TIMEOUT, env=env)
    assert table.returncode == 0, table.stderr
    rows = table.stdout.decode("utf-8").splitlines()
    first = next(row for row in rows if row.startswith("0 "))  # the header above may wrap
    assert rows[0].startswith(f"{shown},") and first.split()[:2] == ["0", shown]


# -- --rows, --color, --no-progress (issue 24.3, 24.7, 24.9) ----------------------------------------
def test_rows_option_shows_every_row_or_as_many_as_asked(data):
    def keys(*options):
        lines = run_at(80, "stats", data, "--per", "sample", "--bins", "0", *options).stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("key ")) + 1
        return [line.split()[0] for line in lines[start:] if not line.startswith("…")], lines[-1]

    shown, last = keys()
    assert shown == [str(k) for k in range(12)]
    assert last == "… 28 more rows (all of them: --rows all, or --format csv or json)"
    assert keys("--rows", "all")[0] == [str(k) for k in range(40)]
    shown, last = keys("--rows", "3")
    assert shown == ["0", "1", "2"] and last.startswith("… 37 more rows")
    for bad in ("0", "-1", "many"):
        result = run_at(80, "stats", data, "--rows", bad, ok=False)
        assert result.exit_code == 2 and "--rows" in result.stderr


def test_batch_rows_follow_rows_too(chdir, data):
    out = run_at(80, "batchnorm", data, "-o", "bn.npy", "-b", "2", "--bins", "0", "--rows", "all").stdout
    lines = out.splitlines()
    start = lines.index("batch norm, batches of 2: 20 batches") + 2
    assert [line.split()[0] for line in lines[start:start + 20]] == [str(k) for k in range(20)]


@pytest.mark.parametrize("option, env, styled", [
    ("always", {"NO_COLOR": "1"}, True), ("never", {"FORCE_COLOR": "1"}, False), ("auto", {"NO_COLOR": "1"}, False),
    ("auto", {"FORCE_COLOR": "1"}, True)])
def test_color_option_overrides_the_environment(tmp_path, data, option, env, styled):
    extra = {"NO_COLOR": "", **env} if "FORCE_COLOR" in env else env
    result = normcli("stats", data, "--bins", "0", "--color", option, cwd=tmp_path, **extra)
    assert result.returncode == 0
    assert (b"\x1b[" in result.stdout) == styled


# -- what a run waits for (issue 24.4) -----------------------------------------------------------------
def test_a_wait_for_a_scheduler_is_said_at_once(tmp_path):
    from normcli.engine import CLUSTER_TIMEOUT
    from normcli.run import EngineOptions

    missing = tmp_path / "nope.json"
    assert render.waiting_notice(EngineOptions(scheduler_file=str(missing))) == \
        f"waiting up to {CLUSTER_TIMEOUT:g} s for the scheduler file {missing} ..."
    assert render.waiting_notice(EngineOptions("dask", scheduler_file=str(missing), cluster_timeout=5)) == \
        f"waiting up to 5 s for the scheduler file {missing} ..."
    assert render.waiting_notice(EngineOptions("dask", scheduler="tcp://10.0.0.1:8786")) == \
        f"connecting to the Dask scheduler at tcp://10.0.0.1:8786 (up to {CLUSTER_TIMEOUT:g} s) ..."
    assert render.waiting_notice(EngineOptions("dask")) is None  # a local cluster starts at once
    assert render.waiting_notice(EngineOptions("threads")) is None


def test_the_waiting_notice_is_shown_on_a_terminal_and_gives_its_line_to_the_error(tmp_path):
    """A real pty: the notice appears before anything else and is erased before the error's line, so
    the terminal keeps one line (pipes get the one error line alone: tests/test_engines.py)."""
    script = ("import time; from normcli.render import ProgressDisplay\n"
              "p = ProgressDisplay(delay=0)\n"
              "p.notice('waiting up to 30 s for the scheduler file nope.json ...')\n"
              "time.sleep(0.1); p.close()\n")
    shown = run_in_pty([sys.executable, "-c", script], tmp_path, stdin_too=False)
    assert shown.startswith("waiting up to 30 s for the scheduler file nope.json ...")
    assert shown.endswith("\r\x1b[2K")


# -- help in sections (issue 24.5) ----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["stats", "normalize", "standardize", "batchnorm", "groupnorm"])
def test_help_groups_the_options_with_the_common_ones_first(command):
    from normcli.cli import SECTIONS

    lines = run_at(80, command, "--help").stdout.splitlines()
    titles = [line[:-1] for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == [t for t in SECTIONS if t in titles] and {"Report", "What to read", "Engine"} <= set(titles)
    where = {word: next(i for i, line in enumerate(lines) if line.lstrip().startswith(word))
             for word in ("--per", "-o, --output", "--layout", "--engine", "--debug")
             if any(line.lstrip().startswith(word) for line in lines)}
    first_rare = min(where["--layout"], where["--engine"])
    assert all(where[w] < first_rare for w in ("--per", "-o, --output") if w in where)
    assert where.get("--per", 0) < 25 and where.get("-o, --output", 0) < 25
    assert where["--debug"] > first_rare  # the rarely used last


# Before the help had sections (d7dc594^), `stats --help` was the shortest at 64 lines of 80 columns
# (normalize 72, standardize 76, batchnorm 86, groupnorm 73): sections must not cost lines.
HELP_LINES_BEFORE_SECTIONS = 64


@pytest.mark.parametrize("command", ["stats", "normalize", "standardize", "batchnorm", "groupnorm"])
def test_help_is_shorter_than_before_it_had_sections_with_the_common_options_first(command):
    lines = run_at(80, command, "--help").stdout.splitlines()
    assert len(lines) <= HELP_LINES_BEFORE_SECTIONS
    first = [line.lstrip() for line in lines[:20]]
    assert any(line.startswith(("-o, --output", "--save-stats")) for line in first)
    assert command == "groupnorm" or any(line.startswith("--per ") for line in first)
    assert not re.search(r"x[<>]=|<=x", "\n".join(lines))  # Click's range suffixes: the help says the bounds


def test_a_value_out_of_range_still_names_the_range(tmp_path, data):
    result = run_at(80, "stats", data, "--bins", "2000", ok=False)
    assert result.exit_code == 2 and "0<=x<=1000" in result.stderr


def test_small_commands_keep_one_option_list():
    out = run_at(80, "sample", "--help").stdout
    assert "Options:" in out and "What to read" not in out


# -- an honest ETA, narrow bars, dumb terminals, the time taken (issue 24.3) -----------------------------
def test_the_eta_is_the_average_pace_over_completed_work_counted_down_between_results():
    # 25 of 100 done 10 s into the pass, results last seen at 10 s: 30 s left at the pace so far
    assert render.remaining_seconds(0.0, 10.0, 10.0, 25, 100) == 30.0
    # 2 s of stall later (a run of results still in flight): counted down, not frozen
    assert render.remaining_seconds(0.0, 10.0, 12.0, 25, 100) == 28.0
    # a stall past the predicted end: the pace with the stall in it (never 0 while work is left)
    assert render.remaining_seconds(0.0, 10.0, 50.0, 25, 100) == 50.0 * 75 / 25
    assert render.remaining_seconds(0.0, 0.0, 5.0, 0, 100) is None


@pytest.mark.parametrize("term, width, wanted, unwanted", [
    ("xterm", 100, ["measuring", "/s", "eta ", "done in "], []),
    ("xterm", 40, ["measuring", "/200", "eta ", "done in "], ["/s"]),  # the rate goes first
    ("dumb", 80, ["measuring: 200/200 in ", "done in "], ["\x1b[", "\r"]),  # plain lines
])
def test_progress_lines_fit_the_terminal_and_end_with_the_time_taken(tmp_path, term, width, wanted, unwanted):
    script = ("from normcli.render import progress_display; import time\n"
              "p = progress_display(quiet=False, terminal=True)\n"
              "p._delay = 0\n"
              "p.phase('measuring', 200)\n"
              "for _ in range(20): p.advance(10, 10000); time.sleep(0.03)\n"
              "p.finish()\n")
    shown = run_in_pty([sys.executable, "-c", script], tmp_path, stdin_too=False,
                       extra_env={"TERM": term, "COLUMNS": str(width)})
    assert run_in_pty.returncode == 0
    for text in wanted:
        assert text in shown, shown
    for text in unwanted:
        assert text not in shown.replace("\r\n", "\n"), shown  # the pty's own line ends aside
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", shown.rstrip().splitlines()[-1])  # the bar's erasure
    assert re.fullmatch(r"done in \d+\.\d s", last), last
