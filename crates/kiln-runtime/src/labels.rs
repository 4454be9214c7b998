//! Class-name files: one name per line, a JSON array, or a JSON object mapping index to name.

use std::path::Path;

use crate::RuntimeError;

/// Reads a label file in any of the accepted forms.
pub fn read_labels(path: &Path) -> Result<Vec<String>, RuntimeError> {
    let text = std::fs::read_to_string(path).map_err(|e| RuntimeError::Labels {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_labels(&text).map_err(|reason| RuntimeError::Labels {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses label text (see [`read_labels`]).
pub fn parse_labels(text: &str) -> Result<Vec<String>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        return match v {
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, s)| match s {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(format!("entry {i} is {other}, not a string")),
                })
                .collect(),
            serde_json::Value::Object(map) => {
                let mut pairs = vec![];
                for (k, v) in map {
                    let i: usize = k
                        .trim()
                        .parse()
                        .map_err(|_| format!("key `{k}` is not a class index"))?;
                    let name = v
                        .as_str()
                        .ok_or_else(|| format!("value for {k} is not a string"))?;
                    pairs.push((i, name.to_string()));
                }
                pairs.sort();
                for (expect, (i, _)) in pairs.iter().enumerate() {
                    if *i != expect {
                        return Err(format!(
                            "class indices must run 0..{} without gaps; {expect} is missing",
                            pairs.len()
                        ));
                    }
                }
                Ok(pairs.into_iter().map(|(_, n)| n).collect())
            }
            _ => Err("expected a JSON array or object".into()),
        };
    }
    let labels: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect::<Vec<_>>();
    // A trailing newline is not an extra class.
    let mut labels = labels;
    while labels.last().is_some_and(|l| l.trim().is_empty()) {
        labels.pop();
    }
    if labels.is_empty() {
        return Err("no labels".into());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::parse_labels;

    #[test]
    fn three_forms_agree() {
        let want = vec!["cat".to_string(), "dog".into(), "hot dog".into()];
        assert_eq!(parse_labels("cat\ndog\nhot dog\n").unwrap(), want);
        assert_eq!(parse_labels("[\"cat\",\"dog\",\"hot dog\"]").unwrap(), want);
        assert_eq!(
            parse_labels("{\"2\":\"hot dog\",\"0\":\"cat\",\"1\":\"dog\"}").unwrap(),
            want
        );
        assert!(parse_labels("{\"0\":\"a\",\"2\":\"b\"}")
            .unwrap_err()
            .contains("1 is missing"));
        assert!(parse_labels("").is_err());
    }
}
