//! Rebuilds the crate when a migration under `migrations/` changes: `sqlx::migrate!`
//! embeds them at compile time, and cargo does not watch those files on its own.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
