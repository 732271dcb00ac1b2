//! Learning: the courses a user owns (opened by a paid order, revoked by its refund), the
//! heartbeats a player sends while studying, and the progress they add up to. The merge rule
//! lives in `domain::learning`; the user's actor answers from memory, so a heartbeat's 202 and
//! a read of progress never wait on the database (the progress is written behind; see the
//! README for the loss window). Admins read the write-behind's counters.

use super::auth::{Admin, Caller};
use super::errors::{ApiError, ErrorBody};
use super::json::JsonBody;
use super::limits::{Heartbeats, RateLimited};
use super::openapi::{
    Forbidden, Malformed, PayloadTooLarge, RateLimited as RateLimitedResponse, Unauthorized, Unavailable,
    UnsupportedMediaType,
};
use super::time::format_ms;
use super::AppState;
use crate::actors::learning::Lesson;
use crate::domain::learning::{Heartbeat, HeartbeatInput, Progress};
use crate::domain::SkuId;
use actix_web::{get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    /// The course (its SKU id).
    #[param(minimum = 1)]
    course_id: i64,
}

/// A heartbeat as a player sends it, with the ranges `Heartbeat::parse` enforces.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The course (its SKU id); the caller must own it.
    #[schema(minimum = 1)]
    course_id: i64,
    #[schema(minimum = 1, maximum = 1000000)]
    section_id: i64,
    /// Seconds into the section.
    #[schema(minimum = 0, maximum = 86400)]
    position_sec: i64,
    /// `true` when the player reports the course completed.
    finished: Option<bool>,
}

impl HeartbeatBody {
    fn input(&self) -> HeartbeatInput {
        HeartbeatInput {
            course_id: self.course_id,
            section_id: self.section_id,
            position_sec: self.position_sec,
            finished: self.finished,
        }
    }
}

/// One course's progress as a player sees it; `updated_at` is the latest heartbeat (or the
/// opening) the service accepted.
#[derive(Serialize, ToSchema)]
pub struct ProgressBody {
    #[schema(value_type = i64)]
    course_id: SkuId,
    course_id_str: String,
    latest_section_id: i64,
    position_sec: i64,
    /// `not_started`, `learning` or `finished`.
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

#[derive(Serialize, ToSchema)]
pub struct LessonPage {
    lessons: Vec<ProgressBody>,
}

/// The write-behind's figures since this node started, and the rows it holds now.
#[derive(Serialize, ToSchema)]
pub struct StatsBody {
    heartbeats: u64,
    rows_flushed: u64,
    flushes: u64,
    redis_round_trips: u64,
    redis_failures: u64,
    redis_rows_written: u64,
    pending_rows: usize,
    redis_pending_rows: usize,
}

#[utoipa::path(
    tag = "learning",
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The courses the caller owns, with their progress", body = LessonPage),
        (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable),
    )
)]
#[get("/v1/learning/lessons")]
pub async fn list_lessons(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let lessons = state.core.lessons(caller.user_id).await?;
    let lessons = lessons.iter().map(ProgressBody::from).collect();
    Ok(HttpResponse::Ok().json(LessonPage { lessons }))
}

#[utoipa::path(
    tag = "learning",
    request_body = HeartbeatBody,
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 202, description = "Accepted in memory (written behind); the merged progress", body = ProgressBody),
        (status = 400, response = Malformed),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`course_not_owned`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, description = "`invalid_heartbeat`: a course, section or position out of range", body = ErrorBody),
        (status = 429, response = RateLimitedResponse),
        (status = 503, response = Unavailable),
    )
)]
#[post("/v1/learning/heartbeats")]
pub async fn receive_heartbeat(
    state: web::Data<AppState>,
    caller: RateLimited<Heartbeats>,
    body: JsonBody<HeartbeatBody>,
) -> Result<HttpResponse, ApiError> {
    let heartbeat = Heartbeat::parse(&body.input())?;
    let progress = state.core.heartbeat(caller.user_id, heartbeat).await?;
    Ok(HttpResponse::Accepted().json(ProgressBody::new(heartbeat.course_id, &progress)))
}

#[utoipa::path(
    tag = "learning",
    params(ProgressQuery),
    security(("user_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "The caller's progress on the course", body = ProgressBody),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`course_not_owned`", body = ErrorBody),
        (status = 422, description = "`invalid_query`, `invalid_course_id`", body = ErrorBody),
        (status = 503, response = Unavailable),
    )
)]
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

#[utoipa::path(
    tag = "learning",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The write-behind's counters since this node started", body = StatsBody),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    )
)]
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
