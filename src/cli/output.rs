//! Human tables and JSON lines.

use serde::Serialize;

/// Print `value` as one line of JSON.
pub fn json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// Print `value` (a flat JSON object) as a two-column table.
pub fn key_value_table<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let v = serde_json::to_value(value)?;
    let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("report is not an object"))?;
    let width = obj.keys().map(String::len).max().unwrap_or(0);
    for (k, v) in obj {
        let shown = match v {
            serde_json::Value::Null => "n/a".to_string(),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => format_float(f),
                _ => n.to_string(),
            },
            other => other.to_string(),
        };
        println!("{k:<width$}  {shown}");
    }
    Ok(())
}

fn format_float(f: f64) -> String {
    if f.abs() >= 1000.0 || f == f.trunc() {
        format!("{f:.1}")
    } else {
        format!("{f:.4}")
    }
}
