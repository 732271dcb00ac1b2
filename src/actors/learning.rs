//! Learning on the user actors: which courses a user owns, heartbeats merged in memory and
//! answered at once, and the write-behind that carries the merged progress to the database.
//!
//! The user actor holds the user's lesson rows (`Lessons`): a heartbeat for a course the user
//! owns is merged by the domain's rule (`Progress::merge`) and answered from memory; the merged
//! progress is recorded in the node's `WriteBehind`, keyed by user and course, so however many
//! heartbeats arrive between two flushes, one row per user and course is written. The flusher
//! drains it every `learning_flush` through the write pipeline, many users per change and one
//! multi-row upsert per statement size. The database joins what it receives into the stored
//! progress (`Progress::join`), so a flush never moves progress back, and a flush whose outcome
//! is unknown is simply recorded again: writing it twice is harmless.
//!
//! When Redis is configured (`Core::mirror_learning`), the same merged progress is also kept
//! in a second pending set that a short tick (`learning_redis_flush`, 1 s) writes to Redis,
//! `USERS_PER_ROUND_TRIP_MAX` users per pipeline; recovery reads it back at start and joins it
//! into the database. A failed Redis write is counted and its rows stay pending for the next
//! tick; it never touches a heartbeat, which only records into the two sets. Both sets hold one
//! entry per user and course, joined, so they are bounded by the user-courses touched since the
//! last successful flush, not by the heartbeats.
//!
//! An actor that activates joins what the write-behind still holds for its user into what it
//! loaded, so passivating loses nothing the node holds. At SIGTERM both sets are flushed. What
//! the node holds and has not yet flushed is lost if the process dies: with Redis, what came in
//! since the last Redis write (one short tick); without it, or with Redis lost too, since the
//! last database flush (see the README).

use super::user::UserActor;
use super::{Core, Refusal, Reply};
use crate::domain::learning::{Heartbeat, Progress};
use crate::domain::order::LessonStep;
use crate::domain::{SkuId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::redis::progress::{MirrorError, ProgressMirror, UserProgress, USERS_PER_ROUND_TRIP_MAX};
use crate::persistence::{Change, LessonRow, ProgressWrite, StoreError, UserState};
use actix::prelude::*;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Progress rows one change of a flush carries.
pub const PROGRESS_ROWS_PER_CHANGE: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LearningError {
    #[error("course {0} is not owned by the user")]
    NotOwned(SkuId),
    #[error("overloaded; retry shortly")]
    Overloaded,
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Another node of the cluster owns the key (`cluster`).
    #[error(transparent)]
    NotOwner(#[from] crate::cluster::NotOwner),
}

impl From<StoreError> for LearningError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotOwner(not_owner) => LearningError::NotOwner(not_owner),
            other => LearningError::Unavailable(other.to_string()),
        }
    }
}

impl From<Refusal> for LearningError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full => LearningError::Overloaded,
            Refusal::Stopped | Refusal::NoAnswer => LearningError::Unavailable("user actor stopped".into()),
        }
    }
}

/// A course the user owns, with the progress on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lesson {
    pub course_id: SkuId,
    pub progress: Progress,
}

/// One user's lesson rows, as committed, with the heartbeats merged since.
#[derive(Debug, Default)]
pub struct Lessons {
    rows: HashMap<SkuId, LessonRow>,
}

impl Lessons {
    /// The rows loaded at activation, joined with what the node has not flushed yet.
    pub fn new(loaded: &[(SkuId, LessonRow)], unflushed: &[(SkuId, Progress)]) -> Self {
        let mut rows: HashMap<SkuId, LessonRow> = loaded.iter().copied().collect();
        for (course_id, progress) in unflushed {
            if let Some(row) = rows.get_mut(course_id) {
                row.progress = row.progress.join(progress);
            }
        }
        Lessons { rows }
    }

    /// Merges an accepted heartbeat; NotOwned for a course the user does not own.
    pub fn accept(&mut self, heartbeat: &Heartbeat, now_ms: i64) -> Result<Progress, LearningError> {
        let row = self.rows.get_mut(&heartbeat.course_id).filter(|row| row.holders > 0);
        let row = row.ok_or(LearningError::NotOwned(heartbeat.course_id))?;
        row.progress = row.progress.merge(heartbeat, now_ms);
        Ok(row.progress)
    }

    /// A committed order step opened or revoked `course_ids` (the rule the commit applied).
    pub fn grant(&mut self, course_ids: &[SkuId], step: LessonStep, now_ms: i64) {
        for course_id in course_ids {
            let before = self.rows.get(course_id).copied();
            let Some(holders) = step.holders_after(before.map(|row| row.holders)) else { continue };
            let progress = before.map_or(Progress::opened(now_ms), |row| row.progress);
            self.rows.insert(*course_id, LessonRow { holders, progress });
        }
    }

    /// The courses owned, by course id.
    pub fn owned(&self) -> Vec<Lesson> {
        let mut owned: Vec<Lesson> = self
            .rows
            .iter()
            .filter(|(_, row)| row.holders > 0)
            .map(|(course_id, row)| Lesson { course_id: *course_id, progress: row.progress })
            .collect();
        owned.sort_by_key(|lesson| lesson.course_id);
        owned
    }

    pub fn progress(&self, course_id: SkuId) -> Result<Progress, LearningError> {
        let row = self.rows.get(&course_id).filter(|row| row.holders > 0);
        row.map(|row| row.progress).ok_or(LearningError::NotOwned(course_id))
    }
}

/// Counters of the write-behind since start.
#[derive(Debug, Default)]
pub struct LearningStats {
    pub heartbeats: AtomicU64,
    pub rows_flushed: AtomicU64,
    pub flushes: AtomicU64,
    /// Write pipelines sent to Redis (one round trip each), failed ones included.
    pub redis_round_trips: AtomicU64,
    /// Write pipelines to Redis that failed or timed out (their rows were kept).
    pub redis_failures: AtomicU64,
    /// User-course rows written to Redis.
    pub redis_rows_written: AtomicU64,
    /// The exported counterparts of `heartbeats` and `rows_flushed`.
    pub metrics: crate::metrics::LearningMetrics,
}

/// Merged progress waiting for one destination, one entry per user and course, joined on
/// record.
#[derive(Default)]
struct Pending {
    users: DashMap<UserId, HashMap<SkuId, Progress>>,
}

impl Pending {
    fn record(&self, user_id: UserId, course_id: SkuId, progress: Progress) {
        let mut courses = self.users.entry(user_id).or_default();
        let joined = courses.get(&course_id).map_or(progress, |held| held.join(&progress));
        courses.insert(course_id, joined);
    }

    fn for_user(&self, user_id: UserId) -> Vec<(SkuId, Progress)> {
        self.users.get(&user_id).map(|courses| courses.iter().map(|(c, p)| (*c, *p)).collect()).unwrap_or_default()
    }

    fn rows(&self) -> usize {
        self.users.iter().map(|courses| courses.len()).sum()
    }

    /// Everything pending, by user, left in place: an entry leaves only once its write is
    /// acknowledged (`settle`), so an actor that activates meanwhile still finds it.
    fn snapshot(&self) -> Vec<UserProgress> {
        self.users.iter().map(|entry| (*entry.key(), entry.value().iter().map(|(c, p)| (*c, *p)).collect())).collect()
    }

    /// Drops the entries `written` carried, unless a newer progress was recorded since.
    fn settle(&self, written: &[UserProgress]) {
        for (user_id, courses) in written {
            if let Some(mut held) = self.users.get_mut(user_id) {
                for (course_id, progress) in courses {
                    if held.get(course_id) == Some(progress) {
                        held.remove(course_id);
                    }
                }
            }
            self.users.remove_if(user_id, |_, held| held.is_empty());
        }
    }
}

/// The node's merged progress not yet in the database (and, with Redis, not yet in Redis),
/// one entry per user and course in each.
#[derive(Default)]
pub struct WriteBehind {
    /// Waiting for the database (the long tick).
    database: Pending,
    /// Waiting for Redis (the short tick); filled only once a mirror is set.
    redis: Pending,
    mirror: OnceLock<ProgressMirror>,
    /// One Redis flush at a time: a flush's older values are never written after a later
    /// flush's newer ones.
    redis_flush: tokio::sync::Mutex<()>,
    /// One database flush at a time (the tick and a shutdown's flush do not write twice).
    database_flush: tokio::sync::Mutex<()>,
    pub stats: LearningStats,
}

impl WriteBehind {
    /// An empty write-behind whose heartbeats and written rows are exported on `metrics`.
    pub fn measured(metrics: crate::metrics::LearningMetrics) -> Self {
        WriteBehind { stats: LearningStats { metrics, ..LearningStats::default() }, ..WriteBehind::default() }
    }

    /// Records a user's merged progress on a course (joined with what is pending).
    pub fn record(&self, user_id: UserId, course_id: SkuId, progress: Progress) {
        self.database.record(user_id, course_id, progress);
        if self.mirror.get().is_some() {
            self.redis.record(user_id, course_id, progress);
        }
    }

    /// What is pending for one user (for an actor that activates), from both sets joined.
    pub fn pending_for(&self, user_id: UserId) -> Vec<(SkuId, Progress)> {
        let mut joined: HashMap<SkuId, Progress> = self.database.for_user(user_id).into_iter().collect();
        for (course_id, progress) in self.redis.for_user(user_id) {
            let held = joined.entry(course_id).or_insert(progress);
            *held = held.join(&progress);
        }
        joined.into_iter().collect()
    }

    /// Rows waiting for the database, for tests and figures.
    pub fn pending_rows(&self) -> usize {
        self.database.rows()
    }

    /// Rows waiting for Redis, for tests and figures.
    pub fn redis_pending_rows(&self) -> usize {
        self.redis.rows()
    }

    /// The Redis mirror, once set.
    pub(crate) fn mirror(&self) -> Option<&ProgressMirror> {
        self.mirror.get()
    }

    /// Everything waiting for the database, as writes (left pending until settled).
    fn database_snapshot(&self) -> Vec<ProgressWrite> {
        let users = self.database.snapshot();
        let rows = users.iter().flat_map(|(user_id, courses)| {
            courses.iter().map(|(course_id, progress)| ProgressWrite {
                user_id: *user_id,
                course_id: *course_id,
                progress: *progress,
            })
        });
        rows.collect()
    }

    /// Drops what a committed database write carried, unless newer progress came since.
    fn database_settle(&self, writes: &[ProgressWrite]) {
        let written: Vec<UserProgress> = writes.iter().map(|w| (w.user_id, vec![(w.course_id, w.progress)])).collect();
        self.database.settle(&written);
    }
}

/// A heartbeat from the user's player.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Beat {
    pub heartbeat: Heartbeat,
    pub reply: Reply<Progress, LearningError>,
}

/// The courses the user owns.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadLessons {
    pub reply: Reply<Vec<Lesson>, LearningError>,
}

/// The progress on one owned course.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadProgress {
    pub course_id: SkuId,
    pub reply: Reply<Progress, LearningError>,
}

impl Handler<Beat> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: Beat, _ctx: &mut Context<Self>) {
        let core = Arc::clone(self.core());
        let now_ms = core.clock.now_ms();
        let merged = self.lessons.accept(&msg.heartbeat, now_ms);
        if let Ok(progress) = merged {
            self.touch();
            core.learning.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            core.learning.stats.metrics.heartbeats.increment(1);
            core.learning.record(self.user_id(), msg.heartbeat.course_id, progress);
        }
        let _ = msg.reply.send(merged);
    }
}

impl Handler<ReadLessons> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: ReadLessons, _ctx: &mut Context<Self>) {
        let _ = msg.reply.send(Ok(self.lessons.owned()));
    }
}

impl Handler<ReadProgress> for UserActor {
    type Result = ();

    fn handle(&mut self, msg: ReadProgress, _ctx: &mut Context<Self>) {
        let _ = msg.reply.send(self.lessons.progress(msg.course_id));
    }
}

/// What the write-behind holds for a user, taken before the user's state is read: a flush
/// that commits and settles during the read is then in one or the other.
pub(crate) fn pending_before_read(core: &Core, user_id: UserId) -> Vec<(SkuId, Progress)> {
    core.learning.pending_for(user_id)
}

/// Builds a user's `Lessons` at activation: the rows read, joined with what was pending before
/// the read and what is pending now.
pub(crate) fn lessons_at_activation(
    core: &Core,
    user_id: UserId,
    state: &UserState,
    pending_before: &[(SkuId, Progress)],
) -> Lessons {
    let mut unflushed = pending_before.to_vec();
    unflushed.extend(core.learning.pending_for(user_id));
    Lessons::new(&state.lessons, &unflushed)
}

/// The learning side of `Core`.
impl Core {
    /// Merges a heartbeat on the user's actor; answered from memory.
    pub async fn heartbeat(self: &Arc<Self>, user_id: UserId, heartbeat: Heartbeat) -> Result<Progress, LearningError> {
        let user = self.user(user_id).await?;
        self.users.ask(user.addr(), |reply| Beat { heartbeat, reply }).await
    }

    /// The courses a user owns with their progress.
    pub async fn lessons(self: &Arc<Self>, user_id: UserId) -> Result<Vec<Lesson>, LearningError> {
        let user = self.user(user_id).await?;
        self.users.ask(user.addr(), |reply| ReadLessons { reply }).await
    }

    /// The latest accepted progress of a user on an owned course.
    pub async fn progress(self: &Arc<Self>, user_id: UserId, course_id: SkuId) -> Result<Progress, LearningError> {
        let user = self.user(user_id).await?;
        self.users.ask(user.addr(), |reply| ReadProgress { course_id, reply }).await
    }

    /// Writes everything the write-behind holds through the pipeline, `PROGRESS_ROWS_PER_CHANGE`
    /// rows per change. A row stays pending until its change is committed, so rows of a change
    /// that failed (or whose outcome is unknown) are written by the next flush, and an actor
    /// that activates during the flush still finds them. Returns the rows written.
    pub async fn flush_learning(&self) -> Result<usize, SubmitError> {
        self.flush_learning_waiting(None).await
    }

    /// `flush_learning` for the shutdown: a full pipeline queue is waited on until `deadline`
    /// (see `Batcher::submit_before`) instead of refusing the flush at once.
    pub async fn flush_learning_before(&self, deadline: tokio::time::Instant) -> Result<usize, SubmitError> {
        self.flush_learning_waiting(Some(deadline)).await
    }

    async fn flush_learning_waiting(&self, room_deadline: Option<tokio::time::Instant>) -> Result<usize, SubmitError> {
        let _one_flush_at_a_time = self.learning.database_flush.lock().await;
        let writes = self.learning.database_snapshot();
        let mut written = 0;
        let mut failure = None;
        for chunk in writes.chunks(PROGRESS_ROWS_PER_CHANGE) {
            let change = Change { progress: chunk.to_vec(), ..Change::default() };
            let submitted = match room_deadline {
                Some(deadline) => self.journal.submit_before(change, deadline).await,
                None => self.journal.submit(change).await,
            };
            match submitted {
                Ok(Ok(())) => {
                    self.learning.database_settle(chunk);
                    written += chunk.len();
                }
                Ok(Err(conflict)) => {
                    // The plan never refuses progress; if a later rule does, the rows stay
                    // pending and the flusher goes on.
                    tracing::error!(%conflict, rows = chunk.len(), "progress write refused; kept pending");
                    failure = Some(SubmitError::Store(StoreError::Corrupt(format!("progress refused: {conflict}"))));
                    break;
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if written > 0 {
            self.learning.stats.rows_flushed.fetch_add(written as u64, Ordering::Relaxed);
            self.learning.stats.metrics.rows_written.increment(written as u64);
            self.learning.stats.flushes.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(rows = written, "learning progress flushed");
        }
        match failure {
            Some(error) => {
                tracing::warn!(%error, kept = self.learning.pending_rows(), "learning flush failed; kept for the next one");
                Err(error)
            }
            None => Ok(written),
        }
    }

    /// Keeps the merged progress in Redis too, written every `learning_redis_flush` (see the
    /// module doc). Set once, at start, before any heartbeat; needs a Tokio runtime.
    pub fn mirror_learning(self: &Arc<Self>, mirror: ProgressMirror) {
        assert!(self.learning.mirror.set(mirror).is_ok(), "the learning mirror is set once");
        tokio::spawn(run_redis_flusher(Arc::downgrade(self), self.limits.learning_redis_flush));
    }

    /// Writes everything waiting for Redis, `USERS_PER_ROUND_TRIP_MAX` users per round trip.
    /// On a failure, what was not written (and the round trip that failed) stays pending for
    /// the next flush. Returns the rows written; 0 without Redis.
    pub async fn flush_learning_to_redis(&self) -> Result<usize, MirrorError> {
        let Some(mirror) = self.learning.mirror.get() else { return Ok(0) };
        let _one_flush_at_a_time = self.learning.redis_flush.lock().await;
        let users = self.learning.redis.snapshot();
        let stats = &self.learning.stats;
        let mut written = 0;
        for chunk in users.chunks(USERS_PER_ROUND_TRIP_MAX) {
            stats.redis_round_trips.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = mirror.write(chunk).await {
                stats.redis_failures.fetch_add(1, Ordering::Relaxed);
                stats.redis_rows_written.fetch_add(written as u64, Ordering::Relaxed);
                return Err(error);
            }
            self.learning.redis.settle(chunk);
            written += chunk.iter().map(|(_, courses)| courses.len()).sum::<usize>();
        }
        stats.redis_rows_written.fetch_add(written as u64, Ordering::Relaxed);
        Ok(written)
    }

    /// What the write-behind has counted since start.
    pub fn learning_stats(&self) -> &LearningStats {
        &self.learning.stats
    }

    /// Rows the write-behind holds now: (waiting for the database, waiting for Redis).
    pub fn learning_pending_rows(&self) -> (usize, usize) {
        (self.learning.pending_rows(), self.learning.redis_pending_rows())
    }
}

/// Flushes the write-behind every `every` for as long as the core lives.
pub(crate) async fn run_flusher(core: Weak<Core>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(core) = core.upgrade() else { return };
        // A failure is logged and its rows kept; the next tick tries again.
        let _ = core.flush_learning().await;
    }
}

/// Writes what waits for Redis every `every` for as long as the core lives. A failure is
/// logged once until Redis answers again; its rows wait for the next tick.
async fn run_redis_flusher(core: Weak<Core>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut failing = false;
    loop {
        ticks.tick().await;
        let Some(core) = core.upgrade() else { return };
        match core.flush_learning_to_redis().await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("learning progress reaches redis again");
            }
            Ok(_) => {}
            Err(error) if !failing => {
                failing = true;
                let kept = core.learning.redis_pending_rows();
                tracing::warn!(%error, kept, "learning progress not written to redis; kept for the next tick");
            }
            Err(error) => tracing::debug!(%error, "redis still failing for learning progress"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::learning::LessonStatus;

    fn at(section: i64, position_sec: i64, updated_at_ms: i64) -> Progress {
        Progress { latest_section_id: section, position_sec, status: LessonStatus::Learning, updated_at_ms }
    }

    fn mirrored() -> WriteBehind {
        let write_behind = WriteBehind::default();
        // Opening does not connect; nothing here talks to Redis.
        let mirror = ProgressMirror::open("redis://127.0.0.1:1").expect("valid url");
        assert!(write_behind.mirror.set(mirror).is_ok());
        write_behind
    }

    fn sorted(mut users: Vec<UserProgress>) -> Vec<UserProgress> {
        users.sort_by_key(|(user_id, _)| *user_id);
        for (_, courses) in &mut users {
            courses.sort_by_key(|(course_id, _)| *course_id);
        }
        users
    }

    const USER: UserId = UserId::new(7);
    const COURSE: SkuId = SkuId::new(10);
    const OTHER_COURSE: SkuId = SkuId::new(11);

    #[test]
    fn without_redis_nothing_waits_for_it() {
        let write_behind = WriteBehind::default();
        write_behind.record(USER, COURSE, at(1, 15, 100));
        assert_eq!(write_behind.pending_rows(), 1);
        assert_eq!(write_behind.redis_pending_rows(), 0);
    }

    #[test]
    fn many_heartbeats_leave_one_row_per_user_and_course_in_each_set() {
        let write_behind = mirrored();
        for beat in 1..=20 {
            write_behind.record(USER, COURSE, at(1, beat * 15, beat));
        }
        write_behind.record(USER, OTHER_COURSE, at(2, 0, 5));
        write_behind.record(UserId::new(8), COURSE, at(1, 0, 5));
        assert_eq!((write_behind.pending_rows(), write_behind.redis_pending_rows()), (3, 3));
        let taken = sorted(write_behind.redis.snapshot());
        let expected = vec![
            (USER, vec![(COURSE, at(1, 300, 20)), (OTHER_COURSE, at(2, 0, 5))]),
            (UserId::new(8), vec![(COURSE, at(1, 0, 5))]),
        ];
        assert_eq!(taken, expected);
        assert_eq!(write_behind.redis_pending_rows(), 3, "pending until the write is acknowledged");
        write_behind.redis.settle(&taken);
        assert_eq!(write_behind.redis_pending_rows(), 0);
        assert_eq!(write_behind.pending_rows(), 3, "the database's set is taken by its own flush");
    }

    #[test]
    fn a_write_settles_only_what_it_carried() {
        let write_behind = mirrored();
        write_behind.record(USER, COURSE, at(1, 30, 100));
        write_behind.record(USER, OTHER_COURSE, at(2, 0, 100));
        let written = write_behind.redis.snapshot();
        // Newer progress on one course arrives while the write is in flight.
        write_behind.record(USER, COURSE, at(1, 45, 115));
        write_behind.redis.settle(&written);
        assert_eq!(write_behind.redis.snapshot(), vec![(USER, vec![(COURSE, at(1, 45, 115))])], "the newer one stays");
        assert_eq!(write_behind.pending_for(USER).len(), 2, "the database's set is untouched");
    }

    #[test]
    fn an_activating_actor_sees_both_sets_joined() {
        let write_behind = mirrored();
        // What one flush took and the other did not yet.
        write_behind.redis.record(USER, COURSE, at(1, 30, 100));
        write_behind.database.record(USER, COURSE, at(1, 15, 110));
        write_behind.database.record(USER, OTHER_COURSE, at(3, 0, 90));
        let mut pending = write_behind.pending_for(USER);
        pending.sort_by_key(|(course_id, _)| *course_id);
        assert_eq!(pending, vec![(COURSE, at(1, 30, 110)), (OTHER_COURSE, at(3, 0, 90))]);
    }
}
