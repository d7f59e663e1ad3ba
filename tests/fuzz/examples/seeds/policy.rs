//! Seeds of `policy_load`: every manifest in `policy/examples/` alone, and each policy file after `cluster.yaml` (the objects
//! the policies select), as `wiremesh apply -f` would see them concatenated.

use std::path::Path;

/// Writes the `policy_load` corpus under `corpus`.
pub fn write_all(corpus: &Path) -> std::io::Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policy/examples");
    let out = corpus.join("policy_load");
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
    Ok(())
}
