//! Unknown-field detection for k8s-openapi types, which skip unknown fields when
//! deserialising. The API server rejects them (kubectl's default strict field validation), and
//! a silently dropped misspelt `podSelecter` would widen a policy, so we reject them too.

use yaml_serde::Value;

/// The first field present in `input` but absent from `parsed` (the typed object serialised
/// back), as a path below `base`. Fields whose value is `null` are skipped: they mean "unset".
pub fn unknown_field(input: &Value, parsed: &serde_json::Value, base: &str) -> Option<String> {
    match (input, parsed) {
        (Value::Mapping(m), serde_json::Value::Object(o)) => {
            for (k, v) in m {
                if v.is_null() {
                    continue;
                }
                let Some(key) = k.as_str() else {
                    return Some(format!("{base}.{k:?}"));
                };
                let path = if base.is_empty() {
                    key.to_string()
                } else {
                    format!("{base}.{key}")
                };
                match o.get(key) {
                    None => return Some(path),
                    Some(pv) => {
                        if let Some(found) = unknown_field(v, pv, &path) {
                            return Some(found);
                        }
                    }
                }
            }
            None
        }
        (Value::Sequence(s), serde_json::Value::Array(a)) => s
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (v, pv))| unknown_field(v, pv, &format!("{base}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_misspelt_field() {
        let input: Value =
            yaml_serde::from_str("podSelector: {}\ningress:\n- from:\n  - podSelecter: {}\n")
                .expect("yaml");
        let parsed = serde_json::json!({"podSelector": {}, "ingress": [{"from": [{}]}]});
        assert_eq!(
            unknown_field(&input, &parsed, "spec").as_deref(),
            Some("spec.ingress[0].from[0].podSelecter")
        );
        let ok: Value = yaml_serde::from_str("podSelector: {}\negress: null\n").expect("yaml");
        assert_eq!(
            unknown_field(&ok, &serde_json::json!({"podSelector": {}}), "spec"),
            None
        );
    }
}
