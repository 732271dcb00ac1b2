-- Learning: a course is a SKU; a paid order opens each of its courses to the buyer, a refund
-- revokes them. `holders` counts the buyer's paid or finished orders holding the course: the
-- course is owned while it is above zero, and progress is kept when it falls to zero, so a
-- course bought again resumes where it was.
CREATE TABLE learning_lesson (
    user_id           BIGINT      NOT NULL,
    course_id         BIGINT      NOT NULL,
    holders           BIGINT      NOT NULL,
    latest_section_id BIGINT      NOT NULL,
    position_sec      BIGINT      NOT NULL,
    -- not_started | learning | finished
    status            VARCHAR(16) NOT NULL,
    updated_at        BIGINT      NOT NULL,
    PRIMARY KEY (user_id, course_id),
    CONSTRAINT learning_lesson_holders CHECK (holders >= 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
