//! Writes the seed corpus of the `policy_load` fuzz target into `corpus/policy_load/`: every
//! manifest in `policy/examples/` alone, and each policy file after `cluster.yaml` (the objects
//! the policies select), as `wiremesh apply -f` would see them concatenated.
//!   cargo run --example seeds   (in policy/fuzz)

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let examples = root.join("../examples");
    let out = root.join("corpus/policy_load");
    std::fs::create_dir_all(&out)?;
    let cluster = std::fs::read_to_string(examples.join("cluster.yaml"))?;
    let mut names: Vec<String> = std::fs::read_dir(&examples)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for name in names {
        let text = std::fs::read_to_string(examples.join(&name))?;
        std::fs::write(out.join(&name), &text)?;
        if name != "cluster.yaml" {
            let both = format!("{cluster}\n---\n{text}");
            std::fs::write(out.join(format!("cluster+{name}")), both)?;
        }
    }
    println!("seeds written under {}", out.display());
    Ok(())
}
