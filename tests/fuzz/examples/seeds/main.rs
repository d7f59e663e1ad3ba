//! Writes the committed seed corpora of every fuzz target into `corpus/<target>/`, in exactly the
//! input formats the harnesses read (the harnesses are in this crate's library). Deterministic
//! file names; re-run after changing an input format:
//!   cargo run --release --example seeds --target-dir ../../target/fuzz   (in tests/fuzz)

mod datapath;
mod policy;
mod store;

fn main() -> std::io::Result<()> {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    datapath::write_all(&corpus)?;
    store::write_all(&corpus)?;
    policy::write_all(&corpus)?;
    println!("seeds written under {}", corpus.display());
    Ok(())
}
