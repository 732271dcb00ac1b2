-- Learning: a course is a SKU; a paid order opens each of its courses to the buyer, a refund
-- revokes them. `holders` counts the buyer's paid or finished orders holding the course: the
-- course is owned while it is above zero, and progress is kept when it falls to zero, so a
-- course bought again resumes where it was.
CREATE TABLE learning_lesson (
    user_id           INTEGER NOT NULL,
    course_id         INTEGER NOT NULL,
    holders           INTEGER NOT NULL CHECK (holders >= 0),
    latest_section_id INTEGER NOT NULL,
    position_sec      INTEGER NOT NULL,
    -- not_started | learning | finished
    status            TEXT    NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (user_id, course_id)
);
