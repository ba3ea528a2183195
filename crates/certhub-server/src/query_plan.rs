//! What part of a twin query's `WHERE` the database answers: conditions on `deviceId`,
//! `status`, `tags.*` and `properties.desired|reported.*` become a [`TwinPred`], which is exact
//! under IoT Hub's semantics. The query still evaluates its whole `WHERE` on every row the
//! database returns, so what SQL cannot express (`NOT`, `!=`, `ENDSWITH`, `connectionState`,
//! two paths compared) only narrows less; it never changes an answer.

use certhub_store::{JsonPath, TwinField, TwinKind, TwinOp, TwinPred, TwinScalar};
use certhub_twin::query::{CompareOp, Expr, Function, Operand, PropertyPath};

/// The database's part of a `WHERE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub pred: TwinPred,
    /// Whether `pred` is the whole `WHERE` (so SQL can count on its own).
    pub exact: bool,
}

/// The database's part of `filter`, if any. `bytewise`: the database orders text as IoT Hub
/// does (by UTF-8 bytes), so string ranges and `STARTSWITH` may go down too.
pub fn push_down(filter: &Expr, bytewise: bool) -> Option<Pushed> {
    let (pred, exact) = push(filter, bytewise);
    pred.map(|pred| Pushed { pred, exact })
}

/// The field of a property path the database can read.
pub fn field(path: &PropertyPath) -> Option<TwinField> {
    let segments: Vec<&str> = path.0.iter().map(String::as_str).collect();
    let json = |prefix: &[&str], rest: &[&str]| {
        if rest.is_empty() {
            return None;
        }
        let all = prefix.iter().chain(rest).map(|s| s.to_string()).collect();
        JsonPath::new(all).map(TwinField::Json)
    };
    match segments.as_slice() {
        ["deviceId"] => Some(TwinField::DeviceId),
        ["status"] => Some(TwinField::Status),
        ["tags", rest @ ..] => json(&["tags"], rest),
        ["properties", "desired", rest @ ..] => json(&["desired", "values"], rest),
        ["properties", "reported", rest @ ..] => json(&["reported", "values"], rest),
        _ => None,
    }
}

/// The stored twin path a query path names, for indexes: `tags.site`,
/// `properties.reported.temp`. None for anything else.
pub fn index_path(query_path: &str) -> Option<JsonPath> {
    let path = PropertyPath(query_path.split('.').map(str::to_string).collect());
    match field(&path)? {
        TwinField::Json(p) => Some(p),
        _ => None,
    }
}

/// The query path of a stored twin path (the inverse of [`index_path`]).
pub fn query_path(path: &JsonPath) -> String {
    match path.segments() {
        [first, second, rest @ ..] if second == "values" && first != "tags" => {
            format!("properties.{first}.{}", rest.join("."))
        }
        all => all.join("."),
    }
}

fn push(e: &Expr, bytewise: bool) -> (Option<TwinPred>, bool) {
    match e {
        Expr::And(terms) => {
            let mut exact = true;
            let mut preds = Vec::new();
            for t in terms {
                let (p, ex) = push(t, bytewise);
                exact &= ex && p.is_some();
                preds.extend(p);
            }
            match preds.len() {
                0 => (None, false),
                1 => (preds.pop(), exact),
                _ => (Some(TwinPred::And(preds)), exact),
            }
        }
        Expr::Or(terms) => {
            let mut exact = true;
            let mut preds = Vec::new();
            for t in terms {
                match push(t, bytewise) {
                    (Some(p), ex) => {
                        exact &= ex;
                        preds.push(p);
                    }
                    // One branch the database cannot decide: any device may match it.
                    (None, _) => return (None, false),
                }
            }
            (Some(TwinPred::Or(preds)), exact)
        }
        Expr::Not(_) => (None, false),
        Expr::Compare { left, op, right } => {
            let (path, op, value) = match (left, right) {
                (Operand::Path(p), Operand::Literal(v)) => (p, *op, v),
                (Operand::Literal(v), Operand::Path(p)) => (p, flip(*op), v),
                _ => return (None, false),
            };
            let op = match op {
                CompareOp::Eq => TwinOp::Eq,
                CompareOp::Lt => TwinOp::Lt,
                CompareOp::Le => TwinOp::Le,
                CompareOp::Gt => TwinOp::Gt,
                CompareOp::Ge => TwinOp::Ge,
                CompareOp::Ne => return (None, false),
            };
            let (Some(field), Some(value)) = (field(path), TwinScalar::from_json(value)) else {
                return (None, false);
            };
            if op != TwinOp::Eq && matches!(value, TwinScalar::Str(_)) && !bytewise {
                return (None, false);
            }
            (Some(TwinPred::Compare(field, op, value)), true)
        }
        Expr::In {
            operand: Operand::Path(path),
            values,
            negated: false,
        } => {
            let Some(field) = field(path) else {
                return (None, false);
            };
            let scalars: Option<Vec<TwinScalar>> =
                values.iter().map(TwinScalar::from_json).collect();
            match scalars {
                Some(scalars) => (
                    Some(TwinPred::Or(
                        scalars
                            .into_iter()
                            .map(|v| TwinPred::Compare(field.clone(), TwinOp::Eq, v))
                            .collect(),
                    )),
                    true,
                ),
                None => (None, false),
            }
        }
        Expr::In { .. } => (None, false),
        Expr::Check { function, path } => {
            let Some(field) = field(path) else {
                return (None, false);
            };
            let kind = match function {
                Function::IsDefined => TwinKind::Defined,
                Function::IsNull => TwinKind::Null,
                Function::IsString => TwinKind::String,
                Function::IsNumber => TwinKind::Number,
                Function::IsBool => TwinKind::Bool,
                Function::IsObject => TwinKind::Object,
                Function::StartsWith(prefix) if bytewise => {
                    return (Some(TwinPred::Prefix(field, prefix.clone())), true);
                }
                Function::StartsWith(_) | Function::EndsWith(_) => return (None, false),
            };
            (Some(TwinPred::Is(field, kind)), true)
        }
    }
}

/// Whether `filter` holds only for connected devices: `connectionState = 'Connected'` (or
/// `IN ['Connected']`) is the filter or a term of its `AND`. The hub knows which devices are
/// connected, so such a query reads their twins and no others. `Some(true)`: that condition is
/// the whole filter (a `COUNT()` is the number of connected devices).
pub fn connected_only(filter: &Expr) -> Option<bool> {
    fn is_connected(e: &Expr) -> bool {
        let connection_state = |p: &PropertyPath| p.0.len() == 1 && p.0[0] == "connectionState";
        let connected = |v: &serde_json::Value| v.as_str() == Some("Connected");
        match e {
            Expr::Compare {
                left: Operand::Path(p),
                op: CompareOp::Eq,
                right: Operand::Literal(v),
            }
            | Expr::Compare {
                left: Operand::Literal(v),
                op: CompareOp::Eq,
                right: Operand::Path(p),
            } => connection_state(p) && connected(v),
            Expr::In {
                operand: Operand::Path(p),
                values,
                negated: false,
            } => connection_state(p) && !values.is_empty() && values.iter().all(connected),
            Expr::And(terms) => terms.iter().any(is_connected),
            _ => false,
        }
    }
    match filter {
        Expr::And(terms) => terms.iter().any(is_connected).then_some(false),
        e => is_connected(e).then_some(true),
    }
}

/// `5 < x` is `x > 5`.
fn flip(op: CompareOp) -> CompareOp {
    match op {
        CompareOp::Lt => CompareOp::Gt,
        CompareOp::Gt => CompareOp::Lt,
        CompareOp::Le => CompareOp::Ge,
        CompareOp::Ge => CompareOp::Le,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(q: &str) -> Option<Pushed> {
        let q = certhub_twin::query::parse(q).expect("parse");
        push_down(q.filter.as_ref().expect("where"), true)
    }

    #[test]
    fn what_goes_down_and_whether_it_is_the_whole_where() {
        let p = pushed("SELECT * FROM devices WHERE tags.site = 'a'").expect("pushed");
        assert!(p.exact);
        let p = pushed("SELECT * FROM devices WHERE tags.site = 'a' AND connectionState = 'x'")
            .expect("pushed");
        assert!(!p.exact, "connectionState stays in Rust");
        let connected = |q: &str| {
            let q = certhub_twin::query::parse(q).expect("parse");
            connected_only(q.filter.as_ref().expect("where"))
        };
        let from = "SELECT * FROM devices WHERE ";
        for (filter, want) in [
            ("connectionState = 'Connected'", Some(true)),
            ("'Connected' = connectionState", Some(true)),
            ("connectionState IN ['Connected']", Some(true)),
            ("tags.a = 1 AND connectionState = 'Connected'", Some(false)),
            (
                "tags.a = 1 AND (tags.b = 2 AND connectionState = 'Connected')",
                Some(false),
            ),
            ("connectionState = 'Disconnected'", None),
            ("connectionState = 'connected'", None),
            ("connectionState != 'Connected'", None),
            ("connectionState IN ['Connected', 'Disconnected']", None),
            ("tags.a = 1 OR connectionState = 'Connected'", None),
            ("NOT connectionState = 'Connected'", None),
            ("properties.reported.connectionState = 'Connected'", None),
        ] {
            assert_eq!(connected(&format!("{from}{filter}")), want, "{filter}");
        }
        assert!(pushed("SELECT * FROM devices WHERE tags.a = 1 OR NOT tags.b = 2").is_none());
        assert!(pushed("SELECT * FROM devices WHERE tags.a != 1").is_none());
        let p = pushed("SELECT * FROM devices WHERE 5 < properties.reported.t").expect("pushed");
        let want = TwinPred::Compare(
            TwinField::Json(
                JsonPath::new(vec!["reported".into(), "values".into(), "t".into()]).expect("p"),
            ),
            TwinOp::Gt,
            TwinScalar::Number(5.into()),
        );
        assert_eq!(p.pred, want);
        // `$metadata` and `$version` are not stored under values: never pushed.
        assert!(pushed("SELECT * FROM devices WHERE properties.reported.$version = 3").is_none());
        // A number beyond 2^53 compares as floating point in IoT Hub: left to Rust.
        assert!(pushed("SELECT * FROM devices WHERE tags.n = 9007199254740993").is_none());
        let q = certhub_twin::query::parse("SELECT * FROM devices WHERE deviceId > 'a'")
            .expect("parse");
        assert!(push_down(q.filter.as_ref().expect("where"), false).is_none());
    }

    #[test]
    fn index_paths_name_twin_sections() {
        let p = index_path("properties.reported.temp").expect("path");
        assert_eq!(p.segments(), ["reported", "values", "temp"]);
        assert_eq!(query_path(&p), "properties.reported.temp");
        assert_eq!(
            query_path(&index_path("tags.values.x").expect("p")),
            "tags.values.x"
        );
        assert!(index_path("deviceId").is_none());
        assert!(index_path("tags").is_none());
        assert!(index_path("properties.reported.$metadata").is_none());
        assert!(index_path("tags.a-b").is_none());
    }
}
