//! Learning progress: the heartbeat a player sends every ~15 s while studying a course (a SKU),
//! and how those heartbeats add up to the progress kept for the player and course.
//!
//! Guarantees:
//! - A `Heartbeat` only exists with a positive course id, a section in `1..=SECTION_ID_MAX` and
//!   a position in `0..=POSITION_SEC_MAX` (`Heartbeat::parse`).
//! - The position is ordered by `(section_id, position_sec)` lexicographically and never moves
//!   back: a later heartbeat for an earlier section, or for an earlier position in the same
//!   section, changes nothing of the position.
//! - Any accepted heartbeat makes the status at least `Learning`; one with `finished: true`
//!   (the player reports the course completed) makes it `Finished`, and a finished course stays
//!   finished: the status only ever takes the max (`NotStarted < Learning < Finished`).
//! - `updated_at_ms` is the latest time seen, never an earlier one.
//! - All of it is one rule, `Progress::join`: the component-wise max (position by lexicographic
//!   max, status max, time max). `merge` is `join` with the progress one heartbeat reports, so
//!   it is commutative, associative and idempotent: the same heartbeats arriving in any order,
//!   duplicated or replayed, give the same state, and the database's and Redis's copies combine
//!   without either one winning wrongly.
//! - Every `Progress` these functions take or return has `0 <= latest_section_id <=
//!   SECTION_ID_MAX` and `0 <= position_sec <= POSITION_SEC_MAX` (asserted; section 0 is the
//!   "opened, nothing watched yet" position).

use super::ids::SkuId;
use serde::Deserialize;
use std::fmt;

/// The largest section id; section ids are `1..=SECTION_ID_MAX`.
pub const SECTION_ID_MAX: i64 = 1_000_000;
/// The largest position within a section, in seconds (one day); positions are
/// `0..=POSITION_SEC_MAX`.
pub const POSITION_SEC_MAX: i64 = 86_400;

/// A heartbeat body as it arrived from outside, before any check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatInput {
    pub course_id: i64,
    pub section_id: i64,
    pub position_sec: i64,
    /// `Some(true)` when the player reports the course completed; absent means `false`.
    pub finished: Option<bool>,
}

/// A valid heartbeat: the course exists as an id, the section and position are in range.
/// Whether the player may study the course is the caller's question, not this type's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub course_id: SkuId,
    pub section_id: i64,
    pub position_sec: i64,
    pub finished: bool,
}

/// Why a heartbeat is refused. Checked in this order: course, section, position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("course_id must be a positive id")]
    InvalidCourse,
    #[error("section_id must be between 1 and {SECTION_ID_MAX}")]
    InvalidSection,
    #[error("position_sec must be between 0 and {POSITION_SEC_MAX}")]
    InvalidPosition,
}

impl Heartbeat {
    /// Checks in this order: course (positive), section (`1..=SECTION_ID_MAX`), position
    /// (`0..=POSITION_SEC_MAX`). An absent `finished` is `false`.
    pub fn parse(input: &HeartbeatInput) -> Result<Heartbeat, HeartbeatError> {
        let course_id = SkuId::parse(input.course_id).ok_or(HeartbeatError::InvalidCourse)?;
        if !(1..=SECTION_ID_MAX).contains(&input.section_id) {
            return Err(HeartbeatError::InvalidSection);
        }
        if !(0..=POSITION_SEC_MAX).contains(&input.position_sec) {
            return Err(HeartbeatError::InvalidPosition);
        }
        Ok(Heartbeat {
            course_id,
            section_id: input.section_id,
            position_sec: input.position_sec,
            finished: input.finished.unwrap_or(false),
        })
    }
}

/// Where a player is with a course. The order is the order of progress: a status never goes
/// back down it. The names are stored and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LessonStatus {
    NotStarted,
    Learning,
    Finished,
}

impl LessonStatus {
    pub const ALL: [LessonStatus; 3] = [Self::NotStarted, Self::Learning, Self::Finished];

    /// The stored and API name: "not_started" | "learning" | "finished".
    pub const fn name(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Learning => "learning",
            Self::Finished => "finished",
        }
    }

    /// Reads a stored name back; `None` for any other string.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.name() == name)
    }
}

impl fmt::Display for LessonStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One player's progress on one course, as the database and Redis keep it.
/// Invariant: `0 <= latest_section_id <= SECTION_ID_MAX`, `0 <= position_sec <=
/// POSITION_SEC_MAX` (see `is_valid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The furthest section reached; 0 before the first heartbeat.
    pub latest_section_id: i64,
    /// The furthest position within `latest_section_id`, in seconds.
    pub position_sec: i64,
    pub status: LessonStatus,
    /// The latest time a heartbeat (or the opening) was seen, in ms since the Unix epoch.
    pub updated_at_ms: i64,
}

impl Progress {
    /// A course just opened: section 0, position 0, NotStarted, updated_at = opened_at_ms.
    pub const fn opened(opened_at_ms: i64) -> Progress {
        Progress {
            latest_section_id: 0,
            position_sec: 0,
            status: LessonStatus::NotStarted,
            updated_at_ms: opened_at_ms,
        }
    }

    /// The progress one heartbeat reports on its own: its section and position, Learning (or
    /// Finished when it says so), seen at `received_at_ms`.
    pub fn reported(heartbeat: &Heartbeat, received_at_ms: i64) -> Progress {
        let status = if heartbeat.finished { LessonStatus::Finished } else { LessonStatus::Learning };
        let reported = Progress {
            latest_section_id: heartbeat.section_id,
            position_sec: heartbeat.position_sec,
            status,
            updated_at_ms: received_at_ms,
        };
        assert!(
            reported.latest_section_id >= 1 && reported.is_valid(),
            "a heartbeat is parsed before it is merged: {heartbeat:?}"
        );
        reported
    }

    /// The progress after an accepted heartbeat received at now_ms.
    ///
    /// Exactly `self.join(&Progress::reported(heartbeat, now_ms))`: the position moves forward
    /// only, the status becomes at least Learning (Finished when reported), the time is the
    /// later of the two.
    pub fn merge(&self, heartbeat: &Heartbeat, now_ms: i64) -> Progress {
        let merged = self.join(&Progress::reported(heartbeat, now_ms));
        assert!(merged.status >= LessonStatus::Learning, "an accepted heartbeat means learning: {merged:?}");
        merged
    }

    /// The least progress at or past both (used to combine what the database and Redis kept).
    ///
    /// Component-wise max: the later `(section, position)` pair, the higher status, the later
    /// time. Commutative, associative and idempotent.
    pub fn join(&self, other: &Progress) -> Progress {
        assert!(self.is_valid(), "progress out of bounds: {self:?}");
        assert!(other.is_valid(), "progress out of bounds: {other:?}");
        let (latest_section_id, position_sec) = self.position().max(other.position());
        let joined = Progress {
            latest_section_id,
            position_sec,
            status: self.status.max(other.status),
            updated_at_ms: self.updated_at_ms.max(other.updated_at_ms),
        };
        assert!(joined.is_valid());
        assert!(joined.covers(self) && joined.covers(other), "{joined:?} is not past {self:?} and {other:?}");
        joined
    }

    /// Whether `self` carries anything `older` does not (so it needs writing): a later position,
    /// a higher status or a later time. False exactly when `older.join(self) == *older`.
    pub fn is_ahead_of(&self, older: &Progress) -> bool {
        self.position() > older.position() || self.status > older.status || self.updated_at_ms > older.updated_at_ms
    }

    /// Whether the section and position are within bounds: the invariant every method here
    /// asserts. A reader of stored progress can check it before handing the value on.
    pub const fn is_valid(&self) -> bool {
        0 <= self.latest_section_id
            && self.latest_section_id <= SECTION_ID_MAX
            && 0 <= self.position_sec
            && self.position_sec <= POSITION_SEC_MAX
    }

    /// The position as the pair it is ordered by.
    const fn position(&self) -> (i64, i64) {
        (self.latest_section_id, self.position_sec)
    }

    /// Whether `self` is at or past `other` in every component.
    fn covers(&self, other: &Progress) -> bool {
        self.position() >= other.position() && self.status >= other.status && self.updated_at_ms >= other.updated_at_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use LessonStatus::*;

    fn input(course_id: i64, section_id: i64, position_sec: i64) -> HeartbeatInput {
        HeartbeatInput { course_id, section_id, position_sec, finished: None }
    }

    fn heartbeat(section_id: i64, position_sec: i64, finished: bool) -> Heartbeat {
        Heartbeat { course_id: SkuId::new(1), section_id, position_sec, finished }
    }

    fn progress(latest_section_id: i64, position_sec: i64, status: LessonStatus, updated_at_ms: i64) -> Progress {
        Progress { latest_section_id, position_sec, status, updated_at_ms }
    }

    #[test]
    fn parse_rules_in_precedence_order() {
        use HeartbeatError::*;
        // (input, expected): errors in precedence order, then valid edges.
        let table = [
            (input(0, 0, -1), Err(InvalidCourse)),
            (input(-1, 1, 0), Err(InvalidCourse)),
            (input(i64::MIN, 1, 0), Err(InvalidCourse)),
            (input(1, 0, -1), Err(InvalidSection)),
            (input(1, -1, 0), Err(InvalidSection)),
            (input(1, SECTION_ID_MAX + 1, 0), Err(InvalidSection)),
            (input(1, i64::MAX, 0), Err(InvalidSection)),
            (input(1, i64::MIN, 0), Err(InvalidSection)),
            (input(1, 1, -1), Err(InvalidPosition)),
            (input(1, 1, POSITION_SEC_MAX + 1), Err(InvalidPosition)),
            (input(1, 1, i64::MAX), Err(InvalidPosition)),
            (input(1, 1, i64::MIN), Err(InvalidPosition)),
            (input(1, 1, 0), Ok(heartbeat(1, 0, false))),
            (input(1, SECTION_ID_MAX, POSITION_SEC_MAX), Ok(heartbeat(SECTION_ID_MAX, POSITION_SEC_MAX, false))),
            (HeartbeatInput { finished: Some(false), ..input(1, 3, 15) }, Ok(heartbeat(3, 15, false))),
            (HeartbeatInput { finished: Some(true), ..input(1, 3, 15) }, Ok(heartbeat(3, 15, true))),
        ];
        for (input, expected) in table {
            assert_eq!(Heartbeat::parse(&input), expected, "{input:?}");
        }
        let big_course = Heartbeat::parse(&input(i64::MAX, 1, 0)).unwrap();
        assert_eq!(big_course.course_id, SkuId::new(i64::MAX));
    }

    #[test]
    fn input_deserializes_from_a_body() {
        let body = r#"{"course_id": 7, "section_id": 2, "position_sec": 30}"#;
        let parsed: HeartbeatInput = serde_json::from_str(body).unwrap();
        assert_eq!(parsed, input(7, 2, 30), "finished may be left out");
        let body = r#"{"course_id": 7, "section_id": 2, "position_sec": 30, "finished": true}"#;
        assert_eq!(serde_json::from_str::<HeartbeatInput>(body).unwrap().finished, Some(true));
        let unknown = r#"{"course_id": 7, "section_id": 2, "position_sec": 30, "user_id": 1}"#;
        assert!(serde_json::from_str::<HeartbeatInput>(unknown).is_err(), "unknown fields are refused");
        let missing = r#"{"course_id": 7, "position_sec": 30}"#;
        assert!(serde_json::from_str::<HeartbeatInput>(missing).is_err());
    }

    #[test]
    fn error_messages_name_the_bounds() {
        assert_eq!(HeartbeatError::InvalidCourse.to_string(), "course_id must be a positive id");
        assert_eq!(HeartbeatError::InvalidSection.to_string(), "section_id must be between 1 and 1000000");
        assert_eq!(HeartbeatError::InvalidPosition.to_string(), "position_sec must be between 0 and 86400");
    }

    #[test]
    fn status_names_round_trip_and_order() {
        for status in LessonStatus::ALL {
            assert_eq!(LessonStatus::parse(status.name()), Some(status));
            assert_eq!(status.to_string(), status.name());
        }
        assert_eq!(LessonStatus::parse("Learning"), None);
        assert_eq!(LessonStatus::parse(""), None);
        assert!(NotStarted < Learning && Learning < Finished);
    }

    #[test]
    fn opened_is_the_start() {
        assert_eq!(Progress::opened(500), progress(0, 0, NotStarted, 500));
        assert!(Progress::opened(i64::MIN).is_valid());
    }

    #[test]
    fn merge_table() {
        let at_3_120 = progress(3, 120, Learning, 1_000);
        // (before, heartbeat, now, after)
        let table = [
            (Progress::opened(0), heartbeat(1, 0, false), 15, progress(1, 0, Learning, 15)),
            (Progress::opened(0), heartbeat(2, 40, true), 15, progress(2, 40, Finished, 15)),
            (at_3_120, heartbeat(3, 135, false), 1_015, progress(3, 135, Learning, 1_015)),
            (at_3_120, heartbeat(4, 0, false), 1_015, progress(4, 0, Learning, 1_015)),
            (at_3_120, heartbeat(3, 120, false), 1_015, progress(3, 120, Learning, 1_015)),
            // An earlier position in the same section, or an earlier section: the position stays.
            (at_3_120, heartbeat(3, 100, false), 1_015, progress(3, 120, Learning, 1_015)),
            (at_3_120, heartbeat(2, POSITION_SEC_MAX, false), 1_015, progress(3, 120, Learning, 1_015)),
            // A late heartbeat (received before the stored time): the time stays too.
            (at_3_120, heartbeat(3, 100, false), 900, at_3_120),
            (at_3_120, heartbeat(3, 150, false), 900, progress(3, 150, Learning, 1_000)),
            // Finished from an earlier position: finished, the position stays.
            (at_3_120, heartbeat(1, 0, true), 1_015, progress(3, 120, Finished, 1_015)),
            // A finished course stays finished when the player studies it again.
            (progress(3, 120, Finished, 1_000), heartbeat(5, 10, false), 1_015, progress(5, 10, Finished, 1_015)),
            (progress(3, 120, Finished, 1_000), heartbeat(1, 0, false), 1_015, progress(3, 120, Finished, 1_015)),
            (
                progress(SECTION_ID_MAX, POSITION_SEC_MAX, Learning, i64::MAX),
                heartbeat(SECTION_ID_MAX, POSITION_SEC_MAX, true),
                i64::MIN,
                progress(SECTION_ID_MAX, POSITION_SEC_MAX, Finished, i64::MAX),
            ),
        ];
        for (before, heartbeat, now, expected) in table {
            assert_eq!(before.merge(&heartbeat, now), expected, "{before:?} + {heartbeat:?} at {now}");
        }
    }

    #[test]
    fn ahead_of_table() {
        let stored = progress(3, 120, Learning, 1_000);
        // (candidate, ahead of stored)
        let table = [
            (stored, false),
            (progress(3, 121, Learning, 1_000), true),
            (progress(4, 0, NotStarted, 0), true),
            (progress(3, 119, Finished, 0), true),
            (progress(0, 0, NotStarted, 1_001), true),
            (progress(3, 119, Learning, 999), false),
            (progress(2, POSITION_SEC_MAX, Learning, 1_000), false),
            (Progress::opened(1_000), false),
        ];
        for (candidate, ahead) in table {
            assert_eq!(candidate.is_ahead_of(&stored), ahead, "{candidate:?}");
        }
    }

    #[test]
    #[should_panic(expected = "progress out of bounds")]
    fn join_refuses_progress_out_of_bounds() {
        let corrupt = progress(1, POSITION_SEC_MAX + 1, Learning, 0);
        let _ = Progress::opened(0).join(&corrupt);
    }

    #[test]
    #[should_panic(expected = "a heartbeat is parsed before it is merged")]
    fn merge_refuses_an_unparsed_heartbeat() {
        let _ = Progress::opened(0).merge(&heartbeat(1, -5, false), 0);
    }

    fn status_strategy() -> impl Strategy<Value = LessonStatus> {
        prop::sample::select(LessonStatus::ALL.to_vec())
    }

    /// Sections and positions drawn mostly from a few values, so heartbeats collide and overtake
    /// each other, and sometimes from the whole range.
    fn heartbeat_strategy() -> impl Strategy<Value = Heartbeat> {
        let section = prop_oneof![3 => 1i64..=4, 1 => 1i64..=SECTION_ID_MAX];
        let position = prop_oneof![3 => 0i64..=3, 1 => 0i64..=POSITION_SEC_MAX];
        (section, position, prop::bool::weighted(0.2)).prop_map(|(s, p, finished)| heartbeat(s, p, finished))
    }

    fn progress_strategy() -> impl Strategy<Value = Progress> {
        let section = prop_oneof![1 => Just(0i64), 3 => 0i64..=4, 1 => 0i64..=SECTION_ID_MAX];
        let position = prop_oneof![3 => 0i64..=3, 1 => 0i64..=POSITION_SEC_MAX];
        let time = prop_oneof![3 => 0i64..=100, 1 => any::<i64>()];
        (section, position, status_strategy(), time).prop_map(|(s, p, status, t)| progress(s, p, status, t))
    }

    /// Heartbeats, each with the time it was received at.
    type Sequence = Vec<(Heartbeat, i64)>;

    /// A sequence of heartbeats and a shuffle of the same sequence.
    fn sequence_and_shuffle() -> impl Strategy<Value = (Sequence, Sequence)> {
        prop::collection::vec((heartbeat_strategy(), 0i64..=1_000), 0..30)
            .prop_flat_map(|sequence| (Just(sequence.clone()), Just(sequence).prop_shuffle()))
    }

    fn merge_all(start: Progress, sequence: &[(Heartbeat, i64)]) -> Progress {
        sequence.iter().fold(start, |progress, (heartbeat, now)| progress.merge(heartbeat, *now))
    }

    proptest! {
        /// Each heartbeat carries its own receive time; whatever the order, the state is the
        /// naive model: the max position, the max status and the max of the times (the start's
        /// included).
        #[test]
        fn order_of_heartbeats_does_not_matter(start in progress_strategy(), (sequence, shuffled) in sequence_and_shuffle()) {
            let in_order = merge_all(start, &sequence);
            prop_assert_eq!(in_order, merge_all(start, &shuffled));
            let reversed: Vec<_> = sequence.iter().rev().copied().collect();
            prop_assert_eq!(in_order, merge_all(start, &reversed));

            let position = sequence.iter().map(|(h, _)| (h.section_id, h.position_sec)).chain([start.position()]).max();
            let status = sequence
                .iter()
                .map(|(h, _)| if h.finished { Finished } else { Learning })
                .chain([start.status])
                .max();
            let updated_at_ms = sequence.iter().map(|(_, now)| *now).chain([start.updated_at_ms]).max();
            prop_assert_eq!(Some(in_order.position()), position);
            prop_assert_eq!(Some(in_order.status), status);
            prop_assert_eq!(Some(in_order.updated_at_ms), updated_at_ms);
        }

        #[test]
        fn progress_never_moves_back(before in progress_strategy(), heartbeat in heartbeat_strategy(), now in any::<i64>()) {
            let after = before.merge(&heartbeat, now);
            prop_assert!(after.position() >= before.position());
            prop_assert!(after.position() >= (heartbeat.section_id, heartbeat.position_sec));
            prop_assert!(after.status >= before.status);
            prop_assert!(after.status >= Learning);
            prop_assert_eq!(after.updated_at_ms, before.updated_at_ms.max(now));
            prop_assert!(after.is_valid());
        }

        #[test]
        fn finished_stays_finished(start in progress_strategy(), sequence in prop::collection::vec((heartbeat_strategy(), any::<i64>()), 0..30)) {
            let mut progress = start;
            let mut finished = start.status == Finished;
            for (heartbeat, now) in &sequence {
                progress = progress.merge(heartbeat, *now);
                finished |= heartbeat.finished;
                prop_assert_eq!(progress.status == Finished, finished);
            }
        }

        #[test]
        fn join_is_a_semilattice(a in progress_strategy(), b in progress_strategy(), c in progress_strategy()) {
            prop_assert_eq!(a.join(&b), b.join(&a));
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
            prop_assert_eq!(a.join(&a), a);
            prop_assert_eq!(a.join(&b).join(&b), a.join(&b));
        }

        #[test]
        fn merge_is_join_with_the_reported_progress(before in progress_strategy(), heartbeat in heartbeat_strategy(), now in any::<i64>()) {
            let status = if heartbeat.finished { Finished } else { Learning };
            let reported = progress(heartbeat.section_id, heartbeat.position_sec, status, now);
            prop_assert_eq!(Progress::reported(&heartbeat, now), reported);
            prop_assert_eq!(before.merge(&heartbeat, now), before.join(&reported));
        }

        #[test]
        fn ahead_of_means_join_changes_something(a in progress_strategy(), b in progress_strategy()) {
            prop_assert_eq!(a.is_ahead_of(&b), b.join(&a) != b);
            prop_assert!(!a.is_ahead_of(&a));
            prop_assert!(!a.is_ahead_of(&a.join(&b)), "nothing is ahead of what already includes it");
        }
    }
}
