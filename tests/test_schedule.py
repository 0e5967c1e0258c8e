"""The learning-rate schedule: fixed drops, plateau drops and the rate-jump phase."""
import pytest

from llp.train.schedule import LRSchedule, parse_boundaries


def lrs(schedule, losses):
    out = []
    for epoch, loss in enumerate(losses, start=1):
        out.append(schedule.lr)
        schedule.end_epoch(epoch, loss)
    return out


def test_fixed_drops_and_rate_jump():
    s = LRSchedule(0.03, [2, 4], [5, 6, 7], jump_lr=0.003)
    got = lrs(s, [1.0] * 8)
    want = [0.03, 0.03, 0.003, 0.003, 0.0003, 0.003, 0.0003, 0.00003]
    assert got == pytest.approx(want)


def test_plateau_drops_wait_for_patience():
    s = LRSchedule(0.1, [None, None], patience=2)
    # improving, improving, flat, flat -> drop; a new phase sets its own best, flat x2 -> drop
    got = lrs(s, [3.0, 2.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0])
    assert got == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])


def test_state_round_trip():
    s = LRSchedule(0.1, [None], patience=3)
    lrs(s, [1.0, 1.0])
    t = LRSchedule(0.1, [None], patience=3)
    t.load_state_dict(s.state_dict())
    assert lrs(t, [1.0]) == lrs(s, [1.0])


@pytest.mark.parametrize("text,message", [("a,b", "comma-separated"), ("5,3", "increasing"),
                                          ("0", "positive")])
def test_bad_boundaries(text, message):
    with pytest.raises(ValueError, match=message):
        parse_boundaries(text, "--lr-drops", 3)


def test_parse():
    assert parse_boundaries("plateau", "x", 3) == [None, None, None]
    assert parse_boundaries("", "x", 3) == []
    assert parse_boundaries("40, 52", "x", 3) == [40, 52]
