//! Promotions through `Core` on SQLite and MariaDB.
