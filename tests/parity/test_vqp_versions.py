"""``vqp_version`` accepts exactly the released versions of vector-quantize-pytorch, each in one spelling.

The releases from the oldest reproduced to the newest known are listed in the release table
(``RELEASES``); ``vqp_index_releases.py`` beside this file is the package index's list of the
releases from 1.14.0 on, the oracle the table is checked against. A string that is not one of them (another spelling of a
release such as ``"1.27.017"`` or ``"1.32.00"``, a version never released such as ``"1.14.3"``)
is a ``ValueError`` naming ``vqp_version`` and pointing to the valid releases; a value that is
not a string (or ``None``) is a ``TypeError``. Each check runs on the table's ``semantics`` and on
every module's constructor.
"""

from __future__ import annotations

import pytest

from ifsq_quant import FSQ, GroupedResidualFSQ, ResidualFSQ, iFSQ
from ifsq_quant.compat import vqp as table
from tests.parity.vqp_index_releases import INDEX_RELEASES


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


CONSTRUCTORS = {
    "semantics": lambda v: table.semantics(v),
    "FSQ": lambda v: FSQ([5, 5], vqp_version=v),
    "iFSQ": lambda v: iFSQ([5, 5], vqp_version=v),
    "ResidualFSQ": lambda v: ResidualFSQ(levels=[5, 5], num_quantizers=2, vqp_version=v),
    "GroupedResidualFSQ": lambda v: GroupedResidualFSQ(dim=4, groups=2, levels=[5, 5], num_quantizers=2, vqp_version=v),
}


def _releases() -> tuple[str, ...]:
    releases = getattr(table, "RELEASES", None)
    assert releases is not None, f"{table.__name__} has no RELEASES: the table must list the released versions it accepts"
    return tuple(releases)


def test_the_table_lists_the_released_versions():
    releases = _releases()
    assert releases[0] == table.OLDEST and releases[-1] == table.LATEST
    assert all(v == ".".join(str(p) for p in _key(v)) for v in releases), "a release listed in a non-canonical spelling"
    assert [_key(v) for v in releases] == sorted({_key(v) for v in releases}), "RELEASES is not strictly increasing"
    assert _key(table.LATEST) <= _key(INDEX_RELEASES[-1]), (
        f"the table knows {table.LATEST}, newer than {INDEX_RELEASES[-1]}, the newest in vqp_index_releases.py: add the newer releases there")
    expected = tuple(v for v in INDEX_RELEASES if _key(table.OLDEST) <= _key(v) <= _key(table.LATEST))
    assert releases == expected, (f"missing: {sorted(set(expected) - set(releases), key=_key)}, "
                                  f"never released: {sorted(set(releases) - set(expected), key=_key)}")


def test_the_newest_published_release_is_known():
    """1.34.1 is the newest release on the index when this was written (see test_vqp_drift.py for later ones)."""
    assert _key(table.LATEST) >= _key("1.34.1")
    assert table.semantics("1.34.1").is_latest


def test_every_release_is_accepted_or_refused_with_its_reason():
    for version in _releases():
        if version in table.UNUSABLE:
            with pytest.raises(ValueError, match=f"{version}.*not reproduced"):
                table.semantics(version)
            continue
        s = table.semantics(version)
        assert s.release == version
        FSQ([5, 5], vqp_version=version)  # every release's FSQ builds with its defaults


def test_none_is_the_newest_release():
    assert table.semantics(None) == table.semantics(table.LATEST)
    assert table.semantics(None).is_latest and table.semantics(table.LATEST).is_latest


def _gap_neighbours(version: str) -> tuple[str, str]:
    releases = _releases()
    below = max((v for v in releases if _key(v) < _key(version)), key=_key)
    above = min((v for v in releases if _key(v) > _key(version)), key=_key)
    return below, above


NON_CANONICAL = ["1.27.017", "1.32.00", "01.17.8", "1.017.8", "1.17.08", "1.14.00"]
NEVER_RELEASED = ["1.14.3", "1.14.13", "1.18.4", "1.20.999", "1.27.2", "1.27.13", "1.31.3", "1.33.0", "1.34.0"]
MALFORMED = ["", "1.17", "1.17.8.0", "v1.17.8", " 1.17.8", "1.17.8\n", "1.17.8rc1", "1.17.8.post1", "latest", "1.17.x"]


@pytest.mark.parametrize("where", CONSTRUCTORS)
@pytest.mark.parametrize("version", NON_CANONICAL + NEVER_RELEASED + MALFORMED)
def test_a_string_that_is_no_release_is_refused(where, version):
    with pytest.raises(ValueError) as error:
        CONSTRUCTORS[where](version)
    message = str(error.value)
    assert "vqp_version" in message and repr(version) in message, message
    if version in NEVER_RELEASED and _key(table.OLDEST) < _key(version) < _key(table.LATEST):
        below, above = _gap_neighbours(version)
        assert "RELEASES" in message or (below in message and above in message), (
            f"{message!r} neither points to the table's RELEASES nor names the releases around {version} ({below}, {above})")
    elif version in NON_CANONICAL:
        canonical = ".".join(str(part) for part in _key(version))
        assert "RELEASES" in message or repr(canonical) in message, f"{message!r} neither points to RELEASES nor names {canonical!r}"
    else:
        assert "RELEASES" in message or table.LATEST in message, f"{message!r} does not point to the valid releases"


def test_another_spelling_does_not_bypass_a_refused_release():
    """1.27.17 is refused as a whole; "1.27.017" is no release, so it is refused too (not as 1.27.17's semantics)."""
    assert "1.27.17" in table.UNUSABLE
    for build in CONSTRUCTORS.values():
        with pytest.raises(ValueError, match="vqp_version"):
            build("1.27.017")
        with pytest.raises(ValueError, match="1.27.17.*not reproduced"):
            build("1.27.17")


@pytest.mark.parametrize("where", CONSTRUCTORS)
@pytest.mark.parametrize("value", [["1.17.8"], ("1.17.8",), {"1.17.8"}, 1.17, 117, True, b"1.17.8", (1, 17, 8)],
                         ids=lambda v: type(v).__name__ + ":" + repr(v))
def test_a_value_that_is_not_a_string_is_a_type_error(where, value):
    with pytest.raises(TypeError) as error:
        CONSTRUCTORS[where](value)
    message = str(error.value)
    assert "vqp_version" in message and "unhashable" not in message, message


def test_beyond_the_reproduced_range_is_refused_with_the_range():
    with pytest.raises(ValueError, match=table.OLDEST):
        table.semantics("1.12.17")  # a release, before the oldest reproduced
    with pytest.raises(ValueError, match=table.LATEST):
        table.semantics("9.0.0")
