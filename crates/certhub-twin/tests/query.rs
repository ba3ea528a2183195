//! The query subset: each construct parsed, IoT Hub's evaluation rules (undefined, mismatched
//! types, null), projections, and every refusal's message and column.

use certhub_twin::query::{
    self, Collection, CompareOp, Expr, Field, Function, Operand, Projection, PropertyPath,
};
use certhub_twin::{Query, QueryError};
use serde_json::{Value, json};

const CLAUSES: &str = "certhub supports SELECT [TOP n] * | COUNT() | paths FROM devices | devices.modules [WHERE ...]";
const SELECTS: &str = "certhub supports SELECT * | COUNT() [AS alias] | property paths [AS alias], e.g. SELECT deviceId, properties.reported.temp AS t";
const FUNCTIONS: &str = "certhub supports the functions IS_DEFINED, IS_NULL, IS_STRING, IS_NUMBER, IS_BOOL, IS_OBJECT, STARTSWITH and ENDSWITH";
const CONDITIONS: &str = "certhub supports the comparisons = != <> < > <= >=, IN [...] and NIN [...], combined with AND, OR, NOT and parentheses";

fn twin() -> Value {
    json!({
        "deviceId": "sensor-01",
        "status": "enabled",
        "connectionState": "Connected",
        "version": 7,
        "tags": {
            "location": {"region": "us", "floor": 3},
            "owner": null,
            "labels": ["a", "b"]
        },
        "properties": {
            "desired": {"rate": 5, "$version": 2},
            "reported": {
                "temp": 21.5,
                "battery": 80,
                "fw": "1.2.0",
                "online": true,
                "config": {"mode": "eco"},
                "$version": 4
            }
        }
    })
}

fn path(text: &str) -> PropertyPath {
    PropertyPath(text.split('.').map(str::to_owned).collect())
}

fn compare(left: &str, op: CompareOp, right: Value) -> Expr {
    Expr::Compare {
        left: Operand::Path(path(left)),
        op,
        right: Operand::Literal(right),
    }
}

fn filter(condition: &str) -> Expr {
    query::parse(&format!("SELECT * FROM devices WHERE {condition}"))
        .expect("the query parses")
        .filter
        .expect("a WHERE condition")
}

/// Whether the sample twin satisfies `condition`.
fn holds(condition: &str) -> bool {
    filter(condition).matches(&twin())
}

fn refusal(query: &str) -> String {
    query::parse(query)
        .expect_err("the query should be refused")
        .to_string()
}

#[test]
fn select_star_from_devices() {
    assert_eq!(
        query::parse("SELECT * FROM devices").unwrap(),
        Query {
            collection: Collection::Devices,
            top: None,
            projection: Projection::All,
            filter: None,
        }
    );
}

#[test]
fn keywords_functions_and_literals_are_case_insensitive() {
    let q = query::parse(
        "sElEcT tOp 3 * fRoM DeViCeS.MoDuLeS wHeRe tags.location.region = 'us' aNd NoT status = 'disabled' oR is_defined(x) AND tags.owner = NULL",
    )
    .unwrap();
    assert_eq!(q.collection, Collection::Modules);
    assert_eq!(q.top, Some(3));
    assert!(q.matches(&twin()));
    assert!(holds(
        "properties.reported.online = TRUE AND iS_nUlL(tags.owner)"
    ));
}

#[test]
fn property_paths_are_case_sensitive() {
    assert!(holds("tags.location.region = 'us'"));
    assert!(!holds("tags.Location.region = 'us'"));
    assert!(!holds("DeviceId = 'sensor-01'"));
}

#[test]
fn top_takes_a_whole_number() {
    let q = query::parse("SELECT TOP 10 deviceId FROM devices").unwrap();
    assert_eq!(q.top, Some(10));
    assert_eq!(
        refusal("SELECT TOP -1 * FROM devices"),
        "syntax error at column 12: TOP needs a whole number of rows, e.g. SELECT TOP 10 * FROM devices; found '-1'"
    );
    assert!(refusal("SELECT TOP 1.5 * FROM devices").contains("TOP needs a whole number"));
    assert!(refusal("SELECT TOP * FROM devices").contains("found '*'"));
}

#[test]
fn field_projections_use_aliases_or_the_last_segment() {
    let q =
        query::parse("SELECT deviceId, properties.reported.temp AS t, tags.missing FROM devices")
            .unwrap();
    assert_eq!(
        q.projection,
        Projection::Fields(vec![
            Field {
                path: path("deviceId"),
                alias: "deviceId".into()
            },
            Field {
                path: path("properties.reported.temp"),
                alias: "t".into()
            },
            Field {
                path: path("tags.missing"),
                alias: "missing".into()
            },
        ])
    );
    // Undefined paths are left out of the row; objects and nulls are copied.
    assert_eq!(
        q.project(&twin()),
        json!({"deviceId": "sensor-01", "t": 21.5})
    );
    let q = query::parse("SELECT tags.location, tags.owner AS who FROM devices").unwrap();
    assert_eq!(
        q.project(&twin()),
        json!({"location": {"region": "us", "floor": 3}, "who": null})
    );
    assert!(!q.is_count());
    assert_eq!(q.count_alias(), None);
}

#[test]
fn select_star_projects_the_whole_twin() {
    let q = query::parse("SELECT * FROM devices").unwrap();
    assert_eq!(q.project(&twin()), twin());
    assert!(!q.is_count());
}

#[test]
fn count_defaults_to_the_alias_dollar_one() {
    let q = query::parse("SELECT COUNT() FROM devices WHERE status = 'enabled'").unwrap();
    assert_eq!(q.projection, Projection::Count { alias: "$1".into() });
    assert!(q.is_count());
    assert_eq!(q.count_alias(), Some("$1"));
    assert_eq!(q.project(&twin()), json!({}));

    let q = query::parse("select count() as numberOfDevices from devices").unwrap();
    assert_eq!(q.count_alias(), Some("numberOfDevices"));
    assert_eq!(
        refusal("SELECT COUNT(deviceId) FROM devices"),
        "syntax error at column 14: COUNT() takes no arguments: expected ')'; found 'deviceId'"
    );
}

#[test]
fn and_binds_tighter_than_or_and_not_tighter_than_and() {
    assert_eq!(
        filter("a = 1 OR b = 2 AND NOT c = 3"),
        Expr::Or(vec![
            compare("a", CompareOp::Eq, json!(1)),
            Expr::And(vec![
                compare("b", CompareOp::Eq, json!(2)),
                Expr::Not(Box::new(compare("c", CompareOp::Eq, json!(3)))),
            ]),
        ])
    );
    assert_eq!(
        filter("(a = 1 OR b = 2) AND c >= 3"),
        Expr::And(vec![
            Expr::Or(vec![
                compare("a", CompareOp::Eq, json!(1)),
                compare("b", CompareOp::Eq, json!(2)),
            ]),
            compare("c", CompareOp::Ge, json!(3)),
        ])
    );
    // Long chains stay flat.
    let chain = vec!["x = 1"; 500].join(" AND ");
    let Expr::And(terms) = filter(&chain) else {
        panic!("expected AND");
    };
    assert_eq!(terms.len(), 500);

    assert!(holds(
        "status = 'x' OR deviceId = 'sensor-01' AND version = 7"
    ));
    assert!(!holds(
        "(status = 'x' OR deviceId = 'sensor-01') AND version = 8"
    ));
}

#[test]
fn literals_cover_strings_numbers_and_keywords() {
    let cases = [
        (r"a = 'it\'s'", json!("it's")),
        (r#"a = "say \"hi\"""#, json!("say \"hi\"")),
        (r"a = 'back\\slash'", json!("back\\slash")),
        (r#"a = "it's""#, json!("it's")),
        ("a = -3", json!(-3)),
        ("a = 2.5", json!(2.5)),
        ("a = -0.25", json!(-0.25)),
        ("a = 1e3", json!(1000.0)),
        (
            "a = 18446744073709551615",
            json!(18_446_744_073_709_551_615_u64),
        ),
        ("a = false", json!(false)),
        ("a = null", Value::Null),
    ];
    for (condition, literal) in cases {
        assert_eq!(
            filter(condition),
            compare("a", CompareOp::Eq, literal),
            "{condition}"
        );
    }
    // Literals may stand on either side, and paths on both.
    assert!(holds("80 = properties.reported.battery"));
    assert!(holds(
        "properties.desired.rate < properties.reported.battery"
    ));
}

#[test]
fn equality_compares_numbers_numerically_and_other_types_exactly() {
    assert!(holds("properties.reported.battery = 80.0"));
    assert!(holds("properties.reported.temp = 21.5"));
    assert!(holds("deviceId = \"sensor-01\""));
    assert!(holds("properties.reported.online = true"));
    assert!(!holds("properties.reported.battery = '80'"));
    assert!(!holds("properties.reported.online = 'true'"));
    assert!(!holds("deviceId = 'SENSOR-01'"));
}

#[test]
fn not_equal_needs_a_comparable_value() {
    assert!(holds("status != 'disabled'"));
    assert!(holds("status <> 'disabled'"));
    assert!(!holds("status != 'enabled'"));
    assert!(holds("properties.reported.battery != 81"));
    // Different types do not compare, not even for inequality...
    assert!(!holds("properties.reported.battery != '80'"));
    assert!(!holds("properties.reported.online != 1"));
    // ...except with null.
    assert!(holds("deviceId != null"));
    assert!(!holds("deviceId = null"));
    assert!(holds("tags.owner = null"));
    assert!(!holds("tags.owner != null"));
    assert!(holds("tags.owner != 'x'"));
    assert!(!holds("tags.owner = 'x'"));
}

#[test]
fn ordering_applies_to_numbers_and_strings_only() {
    assert!(holds("properties.reported.temp > 21"));
    assert!(holds("properties.reported.temp >= 21.5"));
    assert!(!holds("properties.reported.temp < 21.5"));
    assert!(holds("properties.reported.temp <= 21.5"));
    assert!(holds("properties.reported.battery < 100"));
    assert!(holds("properties.reported.battery > -5"));
    assert!(holds("properties.reported.battery > 79.999"));
    // Strings compare by bytes: "1.2.0" > "1.10.0", and uppercase sorts before lowercase.
    assert!(holds("properties.reported.fw > '1.10.0'"));
    assert!(holds("'B' < 'a'"));
    assert!(holds("status >= 'enabled'"));
    // Mismatched types, booleans, objects and null are never ordered.
    assert!(!holds("properties.reported.battery > '1'"));
    assert!(!holds("properties.reported.fw < 5"));
    assert!(!holds("properties.reported.online > false"));
    assert!(!holds("properties.reported.online >= true"));
    assert!(!holds("tags.location > 1"));
    assert!(!holds("tags.owner <= null"));
}

#[test]
fn undefined_paths_fail_every_comparison_and_not_inverts_that() {
    for condition in [
        "tags.nothing = 1",
        "tags.nothing != 1",
        "tags.nothing <> 1",
        "tags.nothing < 5",
        "tags.nothing >= 5",
        "tags.nothing = null",
        "tags.nothing != null",
        "deviceId.deeper = 'x'",
        "tags.nothing IN [1]",
        "tags.nothing NIN [1]",
    ] {
        assert!(!holds(condition), "{condition}");
        assert!(holds(&format!("NOT {condition}")), "NOT {condition}");
    }
    assert!(holds("NOT NOT status = 'enabled'"));
}

#[test]
fn in_and_nin_match_list_members() {
    assert!(holds("status IN ['enabled', 'disabled']"));
    assert!(!holds("status IN ['disabled']"));
    assert!(holds("properties.reported.battery IN [1, 80.0]"));
    assert!(holds("tags.owner IN [null]"));
    assert!(!holds("status IN []"));
    assert!(holds("status NIN ['disabled', 1]"));
    assert!(!holds("status NIN ['enabled']"));
    assert!(holds("status NIN []"));
    assert!(!holds("properties.reported.battery NIN [80]"));
    assert_eq!(
        filter("a nin ['x', 2, true, null]"),
        Expr::In {
            operand: Operand::Path(path("a")),
            values: vec![json!("x"), json!(2), json!(true), Value::Null],
            negated: true,
        }
    );
}

#[test]
fn type_and_definition_functions() {
    let cases = [
        ("IS_DEFINED(tags.owner)", true),
        ("IS_DEFINED(tags.nothing)", false),
        ("IS_NULL(tags.owner)", true),
        ("IS_NULL(tags.nothing)", false),
        ("IS_NULL(deviceId)", false),
        ("IS_STRING(deviceId)", true),
        ("IS_STRING(properties.reported.battery)", false),
        ("IS_NUMBER(properties.reported.battery)", true),
        ("IS_NUMBER(properties.reported.temp)", true),
        ("IS_NUMBER(properties.reported.fw)", false),
        ("IS_BOOL(properties.reported.online)", true),
        ("IS_BOOL(tags.owner)", false),
        ("IS_OBJECT(tags.location)", true),
        ("IS_OBJECT(tags.labels)", false),
        ("IS_OBJECT(tags.nothing)", false),
        ("NOT IS_DEFINED(tags.nothing)", true),
    ];
    for (condition, expected) in cases {
        assert_eq!(holds(condition), expected, "{condition}");
    }
    assert_eq!(
        filter("is_object(tags.location)"),
        Expr::Check {
            function: Function::IsObject,
            path: path("tags.location")
        }
    );
}

#[test]
fn startswith_and_endswith_match_strings_only() {
    assert!(holds("STARTSWITH(deviceId, 'sensor-')"));
    assert!(!holds("STARTSWITH(deviceId, 'Sensor')"));
    assert!(holds("ENDSWITH(deviceId, \"-01\")"));
    assert!(!holds("ENDSWITH(deviceId, '-02')"));
    assert!(!holds("STARTSWITH(properties.reported.battery, '8')"));
    assert!(!holds("ENDSWITH(tags.nothing, '')"));
    assert_eq!(
        filter("startsWith(deviceId, 'x')"),
        Expr::Check {
            function: Function::StartsWith("x".into()),
            path: path("deviceId")
        }
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE STARTSWITH(deviceId)"),
        "syntax error at column 48: STARTSWITH takes a property path and a string, e.g. STARTSWITH(deviceId, 'sensor-'); found ')'"
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE IS_DEFINED('x')"),
        "syntax error at column 40: IS_DEFINED takes one property path, e.g. IS_DEFINED(tags.location); found 'x'"
    );
}

#[test]
fn queries_without_where_match_everything_and_modules_are_a_collection() {
    assert!(
        query::parse("SELECT * FROM devices")
            .unwrap()
            .matches(&json!({}))
    );
    let q = query::parse("SELECT * FROM devices.modules WHERE moduleId = 'm1'").unwrap();
    assert_eq!(q.collection, Collection::Modules);
    assert!(q.matches(&json!({"deviceId": "d", "moduleId": "m1"})));
    assert!(!q.matches(&json!({"deviceId": "d"})));
}

#[test]
fn group_order_and_join_are_refused_with_their_column() {
    assert_eq!(
        refusal("SELECT COUNT() FROM devices GROUP BY properties.reported.x"),
        format!("unsupported at column 29: GROUP BY; {CLAUSES}")
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE status = 'enabled' ORDER BY deviceId"),
        format!("unsupported at column 48: ORDER BY; {CLAUSES}")
    );
    assert_eq!(
        refusal("SELECT * FROM devices JOIN devices.modules"),
        format!("unsupported at column 23: JOIN; {CLAUSES}")
    );
    assert!(matches!(
        query::parse("select * from devices order by deviceId"),
        Err(QueryError::Unsupported { column: 23, .. })
    ));
}

#[test]
fn other_collections_are_refused() {
    assert_eq!(
        refusal("SELECT * FROM devices.jobs"),
        format!("unsupported at column 23: FROM devices.jobs; {CLAUSES}")
    );
    assert_eq!(
        refusal("SELECT * FROM jobs"),
        format!("unsupported at column 15: FROM jobs; {CLAUSES}")
    );
}

#[test]
fn unknown_functions_are_refused() {
    assert_eq!(
        refusal("SELECT * FROM devices WHERE LOWER(deviceId) = 'x'"),
        format!("unsupported at column 29: the function LOWER; {FUNCTIONS}")
    );
    assert!(refusal("SELECT * FROM devices WHERE COUNT() = 1").contains("the function COUNT;"));
}

#[test]
fn expressions_in_select_are_refused() {
    assert_eq!(
        refusal("SELECT LOWER(deviceId) FROM devices"),
        format!("unsupported at column 8: the function LOWER() in SELECT; {SELECTS}")
    );
    assert_eq!(
        refusal("SELECT deviceId, properties.reported.temp * 2 FROM devices"),
        format!("unsupported at column 43: the expression '*' in SELECT; {SELECTS}")
    );
    assert_eq!(
        refusal("SELECT 'x' FROM devices"),
        format!("unsupported at column 8: selecting 'x'; {SELECTS}")
    );
    assert!(refusal("SELECT deviceId = 'x' FROM devices").contains("the expression '=' in SELECT"));
}

#[test]
fn unsupported_operators_are_refused() {
    assert_eq!(
        refusal("SELECT * FROM devices WHERE deviceId LIKE 'a%'"),
        format!("unsupported at column 38: the operator LIKE; {CONDITIONS}")
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE status NOT IN ['a']"),
        format!("unsupported at column 36: NOT IN (write NIN); {CONDITIONS}")
    );
    assert!(refusal("SELECT * FROM devices WHERE version + 1 = 2").contains("the operator '+'"));
}

#[test]
fn queries_are_limited_to_8192_bytes() {
    let padded = format!("SELECT * FROM devices{}", " ".repeat(8192 - 21));
    assert_eq!(padded.len(), 8192);
    query::parse(&padded).unwrap();
    assert_eq!(
        refusal(&format!("{padded} ")),
        "the query is 8193 bytes; the limit is 8192: shorten it"
    );
}

#[test]
fn nesting_is_limited_to_64_levels() {
    let nested = |levels: usize| {
        format!(
            "SELECT * FROM devices WHERE {}a = 1{}",
            "(".repeat(levels),
            ")".repeat(levels)
        )
    };
    query::parse(&nested(64)).unwrap();
    assert_eq!(
        query::parse(&nested(65)).unwrap_err(),
        QueryError::TooDeep { column: 29 + 64 }
    );
    assert_eq!(
        refusal(&nested(65)),
        "the condition at column 93 nests parentheses and NOT more than 64 levels deep: simplify it"
    );

    // Hostile input is refused without exhausting the stack.
    let nots = format!("SELECT * FROM devices WHERE {}a = 1", "NOT ".repeat(2000));
    assert_eq!(
        query::parse(&nots).unwrap_err(),
        QueryError::TooDeep {
            column: 29 + 4 * 64
        }
    );
    let parens = format!("SELECT * FROM devices WHERE {}", "(".repeat(8000));
    assert!(matches!(
        query::parse(&parens).unwrap_err(),
        QueryError::TooDeep { .. }
    ));
}

#[test]
fn syntax_errors_say_what_was_expected_where() {
    assert_eq!(
        refusal(""),
        "syntax error at column 1: expected SELECT at the start of the query; found the end of the query"
    );
    assert_eq!(
        refusal("SELECT * devices"),
        "syntax error at column 10: expected FROM after the selection; found 'devices'"
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE a = 1 b"),
        "syntax error at column 35: expected AND, OR or the end of the query; found 'b'"
    );
    assert_eq!(
        refusal("SELECT * FROM devices x"),
        "syntax error at column 23: expected WHERE or the end of the query; found 'x'"
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE (a = 1"),
        "syntax error at column 35: expected ')' to close the '(' at column 29; found the end of the query"
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE status IN 'x'"),
        "syntax error at column 39: expected a list in brackets, e.g. IN ['a', 'b']; found 'x'"
    );
    assert_eq!(
        refusal("SELECT * FROM devices WHERE status"),
        "syntax error at column 35: expected a comparison (= != <> < > <= >=), IN or NIN; found the end of the query"
    );
    // Columns count characters, not bytes.
    assert_eq!(
        refusal("SELECT * FROM devices WHERE tags.x = 'é' AND"),
        "syntax error at column 45: expected a property path or a value; found the end of the query"
    );
}

#[test]
fn malformed_literals_are_syntax_errors() {
    assert_eq!(
        refusal("SELECT * FROM devices WHERE tags.x = 'abc"),
        "syntax error at column 38: this string is never closed: end it with '"
    );
    assert_eq!(
        refusal(r"SELECT * FROM devices WHERE tags.x = 'a\nb'"),
        r#"syntax error at column 40: unsupported escape \n: strings support only \' \" and \\"#
    );
    assert!(refusal("SELECT * FROM devices WHERE a = 1e").contains("exponent has no digits"));
    assert!(refusal("SELECT * FROM devices WHERE a = 1e999").contains("out of range"));
}
