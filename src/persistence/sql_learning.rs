//! The SQL of learning (`learning_lesson`), shared by MariaDB and SQLite like `sql.rs`: what a
//! batch reads about lesson rows inside its transaction, the one multi-row upsert that writes
//! them, and the read that starts user actors.

use super::plan::{Facts, Plan, Wanted};
use super::sql::{push_list, push_pairs, statements, upsert_rows, Dialect, SqlStore, ROWS_PER_STATEMENT_MAX};
use super::{LessonRow, StoreError, UserState};
use crate::domain::learning::{LessonStatus, Progress};
use crate::domain::{SkuId, UserId};
use sqlx::any::{Any, AnyRow};
use sqlx::{AnyConnection, QueryBuilder, Row};
use std::collections::HashMap;

const LESSON_COLUMNS: &str = "user_id, course_id, holders, latest_section_id, position_sec, status, updated_at";

fn lesson_from_row(row: &AnyRow) -> Result<((UserId, SkuId), LessonRow), StoreError> {
    let status: String = row.try_get("status")?;
    let progress = Progress {
        latest_section_id: row.try_get("latest_section_id")?,
        position_sec: row.try_get("position_sec")?,
        status: LessonStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("lesson status {status}")))?,
        updated_at_ms: row.try_get("updated_at")?,
    };
    let key = (UserId::new(row.try_get("user_id")?), SkuId::new(row.try_get("course_id")?));
    Ok((key, LessonRow { holders: row.try_get("holders")?, progress }))
}

impl SqlStore {
    /// Locks and reads the lesson rows `wanted` names, inside the batch's transaction.
    pub(super) async fn read_lesson_facts(
        &self,
        tx: &mut AnyConnection,
        wanted: &Wanted,
        facts: &mut Facts,
    ) -> Result<(), StoreError> {
        let keys: Vec<(i64, i64)> = wanted.lessons.iter().map(|(u, c)| (u.get(), c.get())).collect();
        for chunk in statements(&keys, ROWS_PER_STATEMENT_MAX) {
            let mut select = QueryBuilder::<Any>::new(format!("SELECT {LESSON_COLUMNS} FROM learning_lesson WHERE "));
            push_pairs(&mut select, ("user_id", "course_id"), chunk);
            select.push(self.dialect.lock_rows());
            for row in select.build().fetch_all(&mut *tx).await? {
                let (key, lesson) = lesson_from_row(&row)?;
                facts.lessons.insert(key, lesson);
            }
        }
        Ok(())
    }

    /// Fills each user's lesson rows.
    pub(super) async fn load_user_lessons(
        &self,
        user_ids: &[UserId],
        states: &mut HashMap<i64, UserState>,
    ) -> Result<(), StoreError> {
        for chunk in statements(user_ids, ROWS_PER_STATEMENT_MAX) {
            let mut select =
                QueryBuilder::<Any>::new(format!("SELECT {LESSON_COLUMNS} FROM learning_lesson WHERE user_id IN "));
            push_list(&mut select, chunk.iter().map(|id| id.get()));
            select.push(" ORDER BY user_id, course_id");
            for row in select.build().fetch_all(&self.pool).await? {
                let ((user_id, course_id), lesson) = lesson_from_row(&row)?;
                states.entry(user_id.get()).or_default().lessons.push((course_id, lesson));
            }
        }
        Ok(())
    }
}

/// Writes every lesson row the plan left: one multi-row upsert per `ROWS_PER_STATEMENT_MAX`
/// rows, whatever mix of new courses, revocations and progress the batch carried.
pub(super) async fn write_lessons(tx: &mut AnyConnection, dialect: Dialect, plan: &Plan) -> Result<(), StoreError> {
    let rows: Vec<(&(UserId, SkuId), &LessonRow)> = plan.lessons.iter().collect();
    let tail = dialect.upsert_tail(
        &["user_id", "course_id"],
        &["holders", "latest_section_id", "position_sec", "status", "updated_at"],
    );
    upsert_rows(tx, &format!("INSERT INTO learning_lesson ({LESSON_COLUMNS})"), &tail, &rows, |row, entry| {
        let ((user_id, course_id), lesson) = entry;
        let progress = lesson.progress;
        row.push_bind(user_id.get())
            .push_bind(course_id.get())
            .push_bind(lesson.holders)
            .push_bind(progress.latest_section_id)
            .push_bind(progress.position_sec)
            .push_bind(progress.status.name())
            .push_bind(progress.updated_at_ms);
    })
    .await
}
