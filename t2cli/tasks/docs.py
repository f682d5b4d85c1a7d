"""The split-size table of docs/tasks.md, rendered from the registered tasks (a test keeps the page current)."""

from __future__ import annotations

from t2cli.tasks.lookup import list_tasks


def render_split_table() -> str:
    """A Markdown table: task, aliases, category, answer kind, train/valid/test sizes, data source."""
    rows = [
        "| task | aliases | category | scorer | train | valid | test | data |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for task in list_tasks():
        sizes = task.split_sizes()
        kind = task.split("test")[0].kind
        aliases = ", ".join(task.aliases) or "-"
        rows.append(
            f"| `{task.name}` | {aliases} | {task.category} | {kind} | {sizes['train']} | {sizes['valid']} "
            f"| {sizes['test']} | {task.source} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(render_split_table())
