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
//! An actor that activates joins what the write-behind still holds for its user into what it
//! loaded, so passivating loses nothing the node holds. What the node holds and has not yet
//! flushed is lost if the process dies (see the README for the window).

use super::user::UserActor;
use super::{ask, Core, Refusal, Reply};
use crate::domain::learning::{Heartbeat, Progress};
use crate::domain::order::LessonStep;
use crate::domain::{SkuId, UserId};
use crate::persistence::group_commit::SubmitError;
use crate::persistence::{Change, LessonRow, ProgressWrite, UserState};
use actix::prelude::*;
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}

/// The node's merged progress not yet in the database, one entry per user and course.
#[derive(Default)]
pub struct WriteBehind {
    pending: DashMap<UserId, HashMap<SkuId, Progress>>,
    pub stats: LearningStats,
}

impl WriteBehind {
    /// Records a user's merged progress on a course (joined with what is pending).
    pub fn record(&self, user_id: UserId, course_id: SkuId, progress: Progress) {
        let mut courses = self.pending.entry(user_id).or_default();
        let joined = courses.get(&course_id).map_or(progress, |held| held.join(&progress));
        courses.insert(course_id, joined);
    }

    /// What is pending for one user (for an actor that activates).
    pub fn pending_for(&self, user_id: UserId) -> Vec<(SkuId, Progress)> {
        self.pending.get(&user_id).map(|courses| courses.iter().map(|(c, p)| (*c, *p)).collect()).unwrap_or_default()
    }

    /// Rows pending, for tests and figures.
    pub fn pending_rows(&self) -> usize {
        self.pending.iter().map(|courses| courses.len()).sum()
    }

    /// Takes everything pending.
    fn take(&self) -> Vec<ProgressWrite> {
        let users: Vec<UserId> = self.pending.iter().map(|entry| *entry.key()).collect();
        let mut writes = Vec::new();
        for user_id in users {
            if let Some((_, courses)) = self.pending.remove(&user_id) {
                writes.extend(courses.into_iter().map(|(course_id, progress)| ProgressWrite {
                    user_id,
                    course_id,
                    progress,
                }));
            }
        }
        writes
    }

    /// Puts back writes whose commit failed or is unknown (joining is idempotent).
    fn put_back(&self, writes: &[ProgressWrite]) {
        for write in writes {
            self.record(write.user_id, write.course_id, write.progress);
        }
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

/// Builds a user's `Lessons` at activation.
pub(crate) fn lessons_at_activation(core: &Core, user_id: UserId, state: &UserState) -> Lessons {
    Lessons::new(&state.lessons, &core.learning.pending_for(user_id))
}

/// The learning side of `Core`.
impl Core {
    /// Merges a heartbeat on the user's actor; answered from memory.
    pub async fn heartbeat(self: &Arc<Self>, user_id: UserId, heartbeat: Heartbeat) -> Result<Progress, LearningError> {
        let user = self.user(user_id).await.map_err(|e| LearningError::Unavailable(e.to_string()))?;
        ask(user.addr(), |reply| Beat { heartbeat, reply }).await
    }

    /// The courses a user owns with their progress.
    pub async fn lessons(self: &Arc<Self>, user_id: UserId) -> Result<Vec<Lesson>, LearningError> {
        let user = self.user(user_id).await.map_err(|e| LearningError::Unavailable(e.to_string()))?;
        ask(user.addr(), |reply| ReadLessons { reply }).await
    }

    /// The latest accepted progress of a user on an owned course.
    pub async fn progress(self: &Arc<Self>, user_id: UserId, course_id: SkuId) -> Result<Progress, LearningError> {
        let user = self.user(user_id).await.map_err(|e| LearningError::Unavailable(e.to_string()))?;
        ask(user.addr(), |reply| ReadProgress { course_id, reply }).await
    }

    /// Writes everything the write-behind holds through the pipeline, `PROGRESS_ROWS_PER_CHANGE`
    /// rows per change. Rows of a change that failed (or whose outcome is unknown) go back
    /// to the write-behind for the next flush. Returns the rows written.
    pub async fn flush_learning(&self) -> Result<usize, SubmitError> {
        let writes = self.learning.take();
        let mut written = 0;
        let mut failure = None;
        for chunk in writes.chunks(PROGRESS_ROWS_PER_CHANGE) {
            if failure.is_some() {
                self.learning.put_back(chunk);
                continue;
            }
            let change = Change { progress: chunk.to_vec(), ..Change::default() };
            match self.journal.submit(change).await {
                Ok(Ok(())) => written += chunk.len(),
                Ok(Err(conflict)) => unreachable!("progress writes are never refused: {conflict}"),
                Err(error) => {
                    self.learning.put_back(chunk);
                    failure = Some(error);
                }
            }
        }
        if written > 0 {
            self.learning.stats.rows_flushed.fetch_add(written as u64, Ordering::Relaxed);
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

    /// What the write-behind has counted since start.
    pub fn learning_stats(&self) -> &LearningStats {
        &self.learning.stats
    }
}

/// Flushes the write-behind every `every` for as long as the core lives.
pub(crate) async fn run_flusher(core: std::sync::Weak<Core>, every: std::time::Duration) {
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
