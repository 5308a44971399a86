"""mechwork.viz declarative figures: data lands where it should and every string is escaped once, in viz."""

from __future__ import annotations

from mechwork.viz import Grid, Line, bars, heatmap, heatmaps, lines, markers, table

EVIL = "<b>x</b>"
ESC = "&lt;b&gt;x&lt;/b&gt;"


def test_lines_panels_carry_data_and_escape():
    fig = lines(
        [[Line([0.1, 0.2], x=[EVIL, "s1"], name=EVIL, color="red", dash="dot")], [Line([3.0], hover=[EVIL])]],
        titles=[EVIL, "b"],
        title=EVIL,
        subtitle=EVIL,
        xlabel=EVIL,
        ylabel="acc",
        yrange=(0, 1),
    )
    a, b = fig.data
    assert list(a.y) == [0.1, 0.2] and list(a.x) == [ESC, "s1"] and a.name == ESC and a.line.dash == "dot"
    assert list(b.x) == [0] and list(b.text) == [ESC] and b.xaxis == "x2"  # second panel
    assert fig.layout.title.text == f"{ESC}<br><sup>{ESC}</sup>" and fig.layout.annotations[0].text == ESC
    assert fig.layout.xaxis.title.text == ESC and list(fig.layout.yaxis.range) == [0, 1]
    assert EVIL not in fig.to_json()


def test_heatmaps_share_a_symmetric_scale_and_escape():
    g1 = Grid([[1.0, None], [-3.0, float("nan")]], x=[EVIL, EVIL], y=["L0", "L1"], title=EVIL)
    g2 = Grid([[0.5]], x=["p"], y=["L0"], title="b")
    fig = heatmaps([g1, g2], title="t", unit=EVIL)
    h1, h2 = fig.data
    assert h1.zmin == h2.zmin == -3.0 and h1.zmax == 3.0 and h1.showscale and not h2.showscale
    assert list(h1.z[1]) == [-3.0, None]  # NaN becomes a gap
    assert h1.x[0] == ESC and h1.x[1] != h1.x[0]  # duplicate labels kept apart
    assert EVIL not in fig.to_json()
    assert heatmaps([g2], zmax=2.0).data[0].zmax == 2.0


def test_bars_table_markers_escape():
    import torch

    fig = bars(["a", EVIL], {EVIL: [1.0, 2.0], "b": [3.0, 4.0]}, title=EVIL)
    assert [t.name for t in fig.data] == [ESC, "b"] and list(fig.data[1].y) == [3.0, 4.0]
    t = table({EVIL: [EVIL, 1.5]})
    assert list(t.data[0].header.values) == [ESC] and list(t.data[0].cells.values[0]) == [ESC, "1.5"]
    h = markers(heatmap(torch.zeros(2, 2), x=["a", "b"], y=["c", "d"]), ["b"], ["c"], name=EVIL)
    assert h.data[-1].name == ESC and list(h.data[-1].x) == ["b"]
    for f in (fig, t, h):
        assert EVIL not in f.to_json()
