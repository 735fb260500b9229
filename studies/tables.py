"""The tables of README.md and docs/studies.md, written by code from the record (results/).

A generated block in a Markdown document is marked by two HTML comments, invisible on GitHub:

    <!-- table: lr -->
    ...what `experiments.py --tables` writes: lr's table(), from results/lr.json...
    <!-- end of table: lr -->

`python experiments.py --tables` rewrites every marked block in place; test_tables.py fails when
a committed document differs from what results/ generate, so no number in a table is typed by
hand. OTHER_BLOCKS names the blocks that are no study's: README's reproduction table and its
one-epoch first look (from results/report_runs.json), and the comparison with another CPU type
as a table and as README's sentence (from results/replication.json, studies/replication.py).
"""
import json
import re
from pathlib import Path

import plumbing
from studies import replication
from registry import format_time

DOCUMENTS = ("README.md", "docs/studies.md")
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end of table: "
                   r"(?P=name) -->)", re.S)


OTHER_BLOCKS = {   # the blocks that are no study's table: name -> (its JSON, its renderer)
    "report_runs": ("report_runs", lambda r: reproduce().report_table(r)),
    "first_look": ("report_runs", lambda r: reproduce().first_look_table(r)),
    "replication": ("replication", replication.table),
    "replication_summary": ("replication", replication.summary_line),
}


def reproduce():
    """reproduce.py, imported when needed: it imports the model scripts, which studies need not."""
    import reproduce as module
    return module


def generate(name, results_dir, pages):
    """The Markdown of the block `name`: a study page's table() of results/<name>.json with the
    line of where it ran, or one of OTHER_BLOCKS."""
    if name not in OTHER_BLOCKS and name not in pages:
        raise plumbing.SolverError(f"a block names the table {name!r}, which is no study's")
    source, render = OTHER_BLOCKS.get(name, (name, None))
    path = Path(results_dir) / f"{source}.json"
    if not path.exists():
        raise plumbing.SolverError(f"{path} not found: the table {name!r} is generated from it")
    results = json.loads(path.read_text())
    if render:
        return render(results)
    return pages[name].table(results) + "\n" + made_by(results["provenance"]) + "\n"


def made_by(provenance):
    """The line under a study's table: its seeds, machine, wall time and command."""
    seeds = provenance["seeds"]
    seeds = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    jobs = provenance.get("jobs", 1)
    return (f"*{seeds}; {provenance['cpu']}, {provenance['threads']} thread"
            f"{'s' if provenance['threads'] > 1 else ''} per training, {jobs} at once; "
            f"{format_time(provenance.get('wall_s', 0))}; `{provenance['command']}`*")


def rewritten(text, results_dir, pages, missing=None):
    """The document `text` with each marked block's body generated anew. With a list `missing`,
    a block whose JSON is not there yet is left as it is and its error appended to the list."""
    def body(m):
        try:
            table = generate(m["name"], results_dir, pages)
        except plumbing.SolverError as error:
            if missing is None:
                raise
            missing.append(str(error))
            return m.group(0)
        return m.group(1) + table.rstrip("\n") + "\n" + m.group(4)
    return BLOCK.sub(body, text)


def rewrite(results_dir, pages, root="."):
    """Rewrite the marked blocks of DOCUMENTS in place, print what changed; a block whose JSON
    is missing is left alone and named at the end (a SolverError: one line, exit status 1)."""
    missing = []
    for document in DOCUMENTS:
        path = Path(root) / document
        text = path.read_text()
        new = rewritten(text, results_dir, pages, missing)
        names = [m["name"] for m in BLOCK.finditer(text)]
        if new != text:
            path.write_text(new)
        print(f"{document}: {len(names)} tables ({', '.join(names) or 'none'})"
              f"{', rewritten' if new != text else ', unchanged'}")
    if missing:
        raise plumbing.SolverError("not generated, left as they were: " + "; ".join(missing))
