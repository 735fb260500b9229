"""How much another CPU type moves the studies' results: our results/ beside another machine's
JSON of the same studies (../shared/replication/: an Intel Xeon of another model, seeds 0-2).

    python experiments.py --replication ../shared/replication   # writes results/replication.json

Every per-seed test accuracy and outcome that both machines recorded for the same setting and
seed is paired (a setting is the JSON path to it; lists of runs are matched by their settings,
e.g. batch, seed and momentum). A setting is *stable* where every seed is ok on both machines;
there the difference per seed is in points. Elsewhere the outcomes are compared: a setting whose
outcomes differ between the machines sits at the edge of stability, and a claim resting on it
is fragile.
"""
import json
from pathlib import Path

from studies.common import markdown_table
from studies.runner import SIGNIFICANT

ACCURACIES = ("test_acc", "final_test_acc")   # the per-seed numbers compared
MEASURES = (*ACCURACIES, "outcome")
CHANGED_SINCE = {   # measures whose code changed after the other machine's commit (faeb0a1)
    "momentum": ("test_acc", "its per-step test accuracy is taken one update earlier since "
                             "commit ef7e2a0 (the weights before update k, not after), a change "
                             "of code, not of CPU, and the other machine kept no final accuracy; "
                             "its running and batch means are compared instead"),
}
SAME_CODE = {"momentum": ("running_mean", "batch_mean")}   # compared value by value instead


def identical_values(ours, theirs, fields):
    """(identical, all): the values of `fields` in the runs both machines recorded, compared
    after rounding theirs as ours are."""
    keys = scalar_keys(ours["runs"][0]) & scalar_keys(theirs["runs"][0])
    theirs_by = {identity(run, keys): run for run in theirs["runs"]}
    same = total = 0
    for run in ours["runs"]:
        other = theirs_by.get(identity(run, keys))
        for field in fields if other else ():
            for a, b in zip(run[field], other[field]):
                total += 1
                same += a == float(f"{b:.{SIGNIFICANT}g}")
    return same, total


def settings(ours, theirs, path=""):
    """Yield (path, our value, their value) for every accuracy or outcome that both JSON trees
    hold at the same place: a list over seeds, or, in a run of a list of runs (its path names
    a seed), a scalar or a list over its steps."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for key in sorted(ours.keys() & theirs.keys()):
            if key == "provenance":
                continue
            if key in MEASURES:
                yield f"{path}/{key}", ours[key], theirs[key]
            else:
                yield from settings(ours[key], theirs[key], f"{path}/{key}")
    elif isinstance(ours, list) and isinstance(theirs, list):
        if ours and theirs and all(isinstance(item, dict) for item in ours + theirs):
            keys = scalar_keys(ours[0]) & scalar_keys(theirs[0])
            theirs_by = {identity(item, keys): item for item in theirs}
            for item in ours:
                if identity(item, keys) in theirs_by:
                    name = ", ".join(f"{k} {v}" for k, v in identity(item, keys))
                    yield from settings(item, theirs_by[identity(item, keys)], f"{path}[{name}]")
        elif all(isinstance(item, (dict, list)) for item in ours + theirs):
            for index, (mine, other) in enumerate(zip(ours, theirs)):
                yield from settings(mine, other, f"{path}[{index}]")


def scalar_keys(item):
    """The fields of a run in a list of runs that may name its setting: scalars, not measures."""
    return {k for k, v in item.items()
            if k not in MEASURES and isinstance(v, (str, int, float, bool))}


def identity(item, keys):
    """A run's setting: its values of the fields that both machines' runs have (`keys`)."""
    return tuple(sorted((k, item[k]) for k in keys))


def per_seed(value, seeds, one_run):
    """A measure as a list over `seeds`; in one run (one_run), its one value or its steps."""
    if not isinstance(value, list):
        return [value]
    return value if one_run else value[:len(seeds)]


def pair_study(ours, theirs, skip=None):
    """Every setting both machines measured: per seed, both accuracies and both outcomes (the
    measure named `skip` left out)."""
    common = [s for s in theirs["provenance"]["seeds"] if s in ours["provenance"]["seeds"]]
    found = {}
    for path, mine, other in settings(ours, theirs):
        setting, _, measure = path.rpartition("/")
        if measure == skip:
            continue
        kind = "outcome" if measure == "outcome" else "acc"
        entry = found.setdefault(setting, {})
        one_run = "seed " in setting.rpartition("[")[2]
        entry[f"{kind}_ours"] = per_seed(mine, common, one_run)
        entry[f"{kind}_theirs"] = per_seed(other, common, one_run)
    pairs = []
    for setting, entry in sorted(found.items()):
        if "acc_ours" not in entry:
            continue
        n = min(len(entry["acc_ours"]), len(entry["acc_theirs"]))
        outcomes = (entry.get("outcome_ours", ["ok"] * n)[:n],
                    entry.get("outcome_theirs", ["ok"] * n)[:n])
        pairs.append({"setting": setting, "ours": entry["acc_ours"][:n],
                      "theirs": entry["acc_theirs"][:n], "outcome_ours": outcomes[0],
                      "outcome_theirs": outcomes[1]})
    return pairs


def stable(pair):
    return all(o == "ok" for o in pair["outcome_ours"] + pair["outcome_theirs"])


def summary(pairs):
    """Points per seed in the stable settings; the settings whose outcomes differ."""
    gaps = sorted(abs(a - b) * 100 for p in pairs if stable(p)
                  for a, b in zip(p["ours"], p["theirs"]) if None not in (a, b))
    same = sum(a == b or None not in (a, b) and float(f"{b:.{SIGNIFICANT}g}") == a
               for p in pairs for a, b in zip(p["ours"], p["theirs"]))
    edge = [p["setting"] for p in pairs if p["outcome_ours"] != p["outcome_theirs"]]
    return {"stable_settings": sum(map(stable, pairs)), "seed_pairs": len(gaps),
            "identical_seeds": same, "all_seeds": sum(len(p["ours"]) for p in pairs),
            "median_points": round(gaps[len(gaps) // 2], 2) if gaps else None,
            "max_points": round(gaps[-1], 2) if gaps else None,
            "outcomes_differ": edge}


def compare_machines(results_dir, theirs_dir, pages):
    """The JSON of results/replication.json."""
    record = {"theirs": str(theirs_dir), "studies": {}}
    for path in sorted(Path(theirs_dir).glob("*.json")):
        name = path.stem
        ours_path = Path(results_dir) / path.name
        if name not in pages or not ours_path.exists():
            continue
        ours, theirs = json.loads(ours_path.read_text()), json.loads(path.read_text())
        skip, why = CHANGED_SINCE.get(name, (None, None))
        pairs = pair_study(ours, theirs, skip)
        record["studies"][name] = {
            "provenance_ours": ours["provenance"], "provenance_theirs": theirs["provenance"],
            "summary": summary(pairs), "settings": pairs}
        if why:
            same, total = identical_values(ours, theirs, SAME_CODE[name])
            record["studies"][name].update(not_compared=why, values_compared={
                "fields": list(SAME_CODE[name]), "identical": same, "of": total})
    everything = [p for study in record["studies"].values() for p in study["settings"]]
    record["summary"] = summary(everything)
    return record


def table(record):
    """Per study: the settings compared, how far the accuracies of a seed lie apart where both
    machines trained every seed to the end, and the settings whose outcomes differ."""
    def row(name, s, provenance=None):
        edge = ", ".join(s["outcomes_differ"]) or "none"
        return (name, f"{s['identical_seeds']} of {s['all_seeds']}", s["stable_settings"],
                s["seed_pairs"],
                "-" if s["median_points"] is None else f"{s['median_points']:.2f}",
                "-" if s["max_points"] is None else f"{s['max_points']:.2f}", edge)
    rows = [row(name, study["summary"]) for name, study in record["studies"].items()]
    rows.append(("all", *row("", record["summary"])[1:]))
    notes = "".join(f"\n*{name}: {study['not_compared']}: {values_note(study)}.*\n"
                    for name, study in record["studies"].items() if "not_compared" in study)
    return markdown_table(["study", "identical accuracies (seeds)", "stable settings",
                           "seed pairs", "median points apart", "most points apart",
                           "outcomes differ in"], rows) + notes


def values_note(study):
    """"4,800 of 4,800 identical (running_mean, batch_mean)": a study compared value by value."""
    v = study["values_compared"]
    return f"{v['identical']:,} of {v['of']:,} identical ({', '.join(v['fields'])})"


def summary_line(record):
    """README's sentence of it: how far another CPU type moves the results, from the record."""
    s = record["summary"]
    notes = [f"{name}: {values_note(study)}"
             for name, study in record["studies"].items() if "not_compared" in study]
    most = "-" if s["max_points"] is None else f"{s['max_points']:.2f} points"
    return (f"Over {len(record['studies'])} studies, {s['identical_seeds']:,} of "
            f"{s['all_seeds']:,} per-seed accuracies are identical; where every seed trained on "
            f"both machines ({s['stable_settings']} settings) they differ by at most {most}; "
            f"outcomes differ in {len(s['outcomes_differ'])} settings"
            + "".join(f"; {note}" for note in notes) + ".\n")
