//! Learning: the courses a user owns (opened by a paid order, revoked by its refund), the
//! heartbeats a player sends while studying, and the progress they add up to. The merge rule
//! lives in `domain::learning`; the user's actor answers from memory, so a heartbeat's 202 and
//! a read of progress never wait on the database (the progress is written behind; see the
//! README for the loss window). Admins read the write-behind's counters.

use super::auth::{Admin, Caller};
use super::errors::ApiError;
use super::time::format_ms;
use super::AppState;
use crate::actors::learning::Lesson;
use crate::domain::learning::{Heartbeat, HeartbeatInput, Progress};
use crate::domain::SkuId;
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    course_id: i64,
}

/// One course's progress as a player sees it; `updated_at` is the latest heartbeat (or the
/// opening) the service accepted.
#[derive(Serialize)]
pub struct ProgressBody {
    course_id: SkuId,
    course_id_str: String,
    latest_section_id: i64,
    position_sec: i64,
    status: &'static str,
    updated_at: String,
}

impl ProgressBody {
    fn new(course_id: SkuId, progress: &Progress) -> Self {
        assert!(progress.is_valid(), "the actor hands out progress within bounds: {progress:?}");
        ProgressBody {
            course_id,
            course_id_str: course_id.to_string(),
            latest_section_id: progress.latest_section_id,
            position_sec: progress.position_sec,
            status: progress.status.name(),
            updated_at: format_ms(progress.updated_at_ms),
        }
    }
}

impl From<&Lesson> for ProgressBody {
    fn from(lesson: &Lesson) -> Self {
        ProgressBody::new(lesson.course_id, &lesson.progress)
    }
}

#[derive(Serialize)]
struct LessonPage {
    lessons: Vec<ProgressBody>,
}

/// The write-behind's figures since this node started, and the rows it holds now.
#[derive(Serialize)]
struct StatsBody {
    heartbeats: u64,
    rows_flushed: u64,
    flushes: u64,
    redis_round_trips: u64,
    redis_failures: u64,
    redis_rows_written: u64,
    pending_rows: usize,
    redis_pending_rows: usize,
}

#[get("/v1/learning/lessons")]
pub async fn list_lessons(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let lessons = state.core.lessons(caller.user_id).await?;
    let lessons = lessons.iter().map(ProgressBody::from).collect();
    Ok(HttpResponse::Ok().json(LessonPage { lessons }))
}

#[post("/v1/learning/heartbeats")]
pub async fn receive_heartbeat(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<HeartbeatInput>,
) -> Result<HttpResponse, ApiError> {
    let heartbeat = Heartbeat::parse(&body)?;
    let progress = state.core.heartbeat(caller.user_id, heartbeat).await?;
    Ok(HttpResponse::Accepted().json(ProgressBody::new(heartbeat.course_id, &progress)))
}

#[get("/v1/learning/progress")]
pub async fn read_progress(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ProgressQuery>,
) -> Result<HttpResponse, ApiError> {
    let course_id = SkuId::parse(query.course_id)
        .ok_or_else(|| ApiError::unprocessable("invalid_course_id", "course_id must be a positive id"))?;
    let progress = state.core.progress(caller.user_id, course_id).await?;
    Ok(HttpResponse::Ok().json(ProgressBody::new(course_id, &progress)))
}

#[get("/v1/admin/learning/stats")]
pub async fn stats(state: web::Data<AppState>, _admin: Admin) -> HttpResponse {
    let stats = state.core.learning_stats();
    let (pending_rows, redis_pending_rows) = state.core.learning_pending_rows();
    HttpResponse::Ok().json(StatsBody {
        heartbeats: stats.heartbeats.load(Ordering::Relaxed),
        rows_flushed: stats.rows_flushed.load(Ordering::Relaxed),
        flushes: stats.flushes.load(Ordering::Relaxed),
        redis_round_trips: stats.redis_round_trips.load(Ordering::Relaxed),
        redis_failures: stats.redis_failures.load(Ordering::Relaxed),
        redis_rows_written: stats.redis_rows_written.load(Ordering::Relaxed),
        pending_rows,
        redis_pending_rows,
    })
}
