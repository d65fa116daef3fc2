//! YAML with line numbers. A serde `Value` forgets where a node was, and a finding
//! about an Envoy config is only useful with the line to edit, so the Envoy file is
//! read with saphyr's marked nodes and turned into this small owned tree.

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// Deepest nesting accepted: Envoy configs are a few dozen levels deep at most, and a
/// bound keeps a hostile file from exhausting the stack while the tree is converted.
const MAX_DEPTH: usize = 200;

/// One YAML node and the line (1-based) that introduces it: for a mapping value, the
/// line of its key (where an operator looks for `processing_mode:`), otherwise the
/// line where the node starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line.
    pub line: usize,
    /// The content.
    pub value: Value,
}

/// The content of a node. Scalars keep the type YAML gave them (`1s` is a string,
/// `true` a boolean), since Envoy's JSON mapping of protobuf accepts some of both.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Any other scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order (keys as strings).
    Map(Vec<(String, Node)>),
}

/// Why a file is not YAML, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What the parser said.
    pub message: String,
}

/// Parses the first document of `text`; `Ok(None)` when the text holds no document.
pub fn parse(text: &str) -> Result<Option<Node>, YamlError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| YamlError {
        line: e.marker().line(),
        column: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    match docs.first() {
        None => Ok(None),
        Some(doc) => convert(doc, None, 0).map(Some),
    }
}

fn convert(node: &MarkedYaml<'_>, line: Option<usize>, depth: usize) -> Result<Node, YamlError> {
    let here = line.unwrap_or_else(|| node.span.start.line().max(1));
    if depth > MAX_DEPTH {
        return Err(YamlError {
            line: here,
            column: node.span.start.col() + 1,
            message: format!("nested deeper than {MAX_DEPTH} levels"),
        });
    }
    let value = match &node.data {
        YamlData::Value(s) => scalar(s),
        YamlData::Representation(raw, _, _) => Value::Str(raw.to_string()),
        YamlData::Tagged(_, inner) => return convert(inner, Some(here), depth + 1),
        YamlData::Sequence(items) => Value::Seq(
            items
                .iter()
                .map(|i| convert(i, None, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        YamlData::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map.iter() {
                let key_line = k.span.start.line().max(1);
                let key = match convert(k, Some(key_line), depth + 1)?.value {
                    Value::Str(s) => s,
                    Value::Int(i) => i.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Null => "null".to_string(),
                    Value::Seq(_) | Value::Map(_) => {
                        return Err(YamlError {
                            line: key_line,
                            column: k.span.start.col() + 1,
                            message: "a mapping key must be a scalar in an Envoy config".into(),
                        })
                    }
                };
                entries.push((key, convert(v, Some(key_line), depth + 1)?));
            }
            Value::Map(entries)
        }
        YamlData::Alias(_) | YamlData::BadValue => {
            return Err(YamlError {
                line: here,
                column: node.span.start.col() + 1,
                message: "a value that cannot be read (unresolved alias or bad tag)".into(),
            })
        }
    };
    Ok(Node { line: here, value })
}

fn scalar(s: &Scalar<'_>) -> Value {
    match s {
        Scalar::Null => Value::Null,
        Scalar::Boolean(b) => Value::Bool(*b),
        Scalar::Integer(i) => Value::Int(*i),
        Scalar::FloatingPoint(f) => Value::Float(f.into_inner()),
        Scalar::String(s) => Value::Str(s.to_string()),
    }
}

impl Node {
    /// The value of `key` in a mapping (`None` for other nodes). YAML merge keys
    /// (`<<: *anchor`) are followed, as Envoy's YAML reader does.
    pub fn get(&self, key: &str) -> Option<&Node> {
        let Value::Map(entries) = &self.value else {
            return None;
        };
        if let Some((_, v)) = entries.iter().find(|(k, _)| k == key) {
            return Some(v);
        }
        let merged = entries.iter().find(|(k, _)| k == "<<").map(|(_, v)| v)?;
        match &merged.value {
            Value::Map(_) => merged.get(key),
            Value::Seq(items) => items.iter().find_map(|i| i.get(key)),
            _ => None,
        }
    }

    /// Follows a path of keys.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    /// The entries of a mapping (empty for other nodes).
    pub fn entries(&self) -> &[(String, Node)] {
        match &self.value {
            Value::Map(entries) => entries,
            _ => &[],
        }
    }

    /// The items of a sequence (empty for other nodes, and for null, which Envoy reads
    /// as an empty list).
    pub fn items(&self) -> &[Node] {
        match &self.value {
            Value::Seq(items) => items,
            _ => &[],
        }
    }

    /// A string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A boolean, also from the strings `"true"`/`"false"`.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            Value::Str(s) if s == "true" => Some(true),
            Value::Str(s) if s == "false" => Some(false),
            _ => None,
        }
    }

    /// A non-negative integer, also from a string of digits (protobuf's JSON mapping
    /// writes 64-bit integers as strings).
    pub fn as_u64(&self) -> Option<u64> {
        match &self.value {
            Value::Int(i) => u64::try_from(*i).ok(),
            Value::Str(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// Whether this is a mapping.
    pub fn is_map(&self) -> bool {
        matches!(self.value, Value::Map(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_values_carry_the_line_of_their_key() {
        let doc = parse("a:\n  b:\n    c: 1\n  d: [x, y]\n").unwrap().unwrap();
        assert_eq!(doc.line, 1);
        let b = doc.at(&["a", "b"]).unwrap();
        assert_eq!(b.line, 2);
        assert_eq!(doc.at(&["a", "b", "c"]).unwrap().value, Value::Int(1));
        assert_eq!(doc.at(&["a", "b", "c"]).unwrap().line, 3);
        let d = doc.at(&["a", "d"]).unwrap();
        assert_eq!(d.line, 4);
        assert_eq!(d.items().len(), 2);
    }

    #[test]
    fn sequence_items_carry_their_own_line() {
        let doc = parse("l:\n- name: one\n- name: two\n  x: true\n")
            .unwrap()
            .unwrap();
        let l = doc.get("l").unwrap().items();
        assert_eq!(l[0].line, 2);
        assert_eq!(l[1].line, 3);
        assert_eq!(l[1].get("x").unwrap().as_bool(), Some(true));
    }

    #[test]
    fn merge_keys_and_aliases_are_followed() {
        let doc = parse("base: &b {k: 1}\nuse:\n  <<: *b\n  j: 2\n")
            .unwrap()
            .unwrap();
        assert_eq!(doc.at(&["use", "k"]).unwrap().as_u64(), Some(1));
        assert_eq!(doc.at(&["use", "j"]).unwrap().as_u64(), Some(2));
    }

    #[test]
    fn bad_yaml_is_an_error_with_its_line() {
        let e = parse("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.line >= 2, "{e:?}");
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_crash() {
        let text = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        assert!(parse(&text).is_err());
    }
}
