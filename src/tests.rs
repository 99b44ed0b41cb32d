//! `#[pg_test]`s: the SQL surface and every validation error.
#[pg_schema]
mod tests {}
