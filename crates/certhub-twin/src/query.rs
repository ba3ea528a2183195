//! The subset of the IoT Hub query language that `POST /devices/query` accepts:
//!
//! ```text
//! SELECT [TOP n] * | COUNT() [AS alias] | path [AS alias], ...
//! FROM devices | devices.modules
//! [WHERE condition]
//! ```
//!
//! Keywords, function names and `true`/`false`/`null` are case-insensitive; property paths are
//! case-sensitive identifiers joined by `.` (`tags.location.region`,
//! `properties.reported.battery`, `deviceId`). Conditions combine comparisons
//! (`= != <> < > <= >=`), `IN [...]`, `NIN [...]` and the functions `IS_DEFINED`, `IS_NULL`,
//! `IS_STRING`, `IS_NUMBER`, `IS_BOOL`, `IS_OBJECT`, `STARTSWITH` and `ENDSWITH` with `AND`,
//! `OR`, `NOT` and parentheses. Literals are strings in single or double quotes (escapes `\'`,
//! `\"`, `\\`), numbers (integer or decimal, optionally negative, with an exponent), `true`,
//! `false` and `null`.
//!
//! Evaluation follows IoT Hub: a path missing from the twin is undefined, and every
//! comparison involving undefined is false. Values of different JSON types never compare,
//! except that `=` and `!=` treat `null` as a value of its own (`x != null` holds for any
//! defined non-null `x`). Numbers compare numerically, strings by their UTF-8 bytes. Logic is
//! two-valued: `NOT` turns any false, including one caused by an undefined path, into true.
//! `IN` holds when the value equals a list element; `NIN` when it is defined and equals none.
//!
//! Anything else (`GROUP BY`, `ORDER BY`, `JOIN`, other collections or functions, expressions
//! in `SELECT`) is refused with the column where it starts and what certhub supports instead.
//! Queries are at most 8192 bytes and conditions nest at most 64 parentheses and `NOT`s.

use serde_json::{Map, Number, Value};
use std::cmp::Ordering;
use std::mem::discriminant;

const MAX_QUERY_BYTES: usize = 8192;
const MAX_NESTING: usize = 64;
const DEFAULT_COUNT_ALIAS: &str = "$1";

const QUERY_FORMS: &str =
    "SELECT [TOP n] * | COUNT() | paths FROM devices | devices.modules [WHERE ...]";
const SELECT_FORMS: &str = "SELECT * | COUNT() [AS alias] | property paths [AS alias], e.g. SELECT deviceId, properties.reported.temp AS t";
const FUNCTIONS: &str = "the functions IS_DEFINED, IS_NULL, IS_STRING, IS_NUMBER, IS_BOOL, IS_OBJECT, STARTSWITH and ENDSWITH";
const CONDITIONS: &str = "the comparisons = != <> < > <= >=, IN [...] and NIN [...], combined with AND, OR, NOT and parentheses";

/// Words that cannot start a property path or name an alias.
const RESERVED: &[&str] = &[
    "SELECT", "TOP", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "IN", "NIN", "GROUP", "ORDER",
    "BY", "JOIN",
];

/// Why a query was refused. Messages are shown to API users as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is {len} bytes; the limit is {MAX_QUERY_BYTES}: shorten it")]
    TooLong { len: usize },
    #[error("syntax error at column {column}: {message}")]
    Syntax { column: usize, message: String },
    #[error("unsupported at column {column}: {what}; certhub supports {supported}")]
    Unsupported {
        column: usize,
        what: String,
        supported: &'static str,
    },
    #[error(
        "the condition at column {column} nests parentheses and NOT more than {MAX_NESTING} levels deep: simplify it"
    )]
    TooDeep { column: usize },
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub collection: Collection,
    /// `TOP n`: the most rows to return.
    pub top: Option<usize>,
    pub projection: Projection,
    /// The `WHERE` condition; `None` matches every twin.
    pub filter: Option<Expr>,
}

/// What the query reads: device twins or module twins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `FROM devices`
    Devices,
    /// `FROM devices.modules`
    Modules,
}

/// What each matching twin contributes to the result.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// `SELECT *`: the whole twin.
    All,
    /// `SELECT COUNT() [AS alias]`: one row `{alias: count}`; the alias defaults to `$1`.
    Count { alias: String },
    /// `SELECT a.b [AS x], ...`
    Fields(Vec<Field>),
}

/// One selected property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub path: PropertyPath,
    /// The result's key: the `AS` alias, or else the path's last segment.
    pub alias: String,
}

/// A property path such as `properties.reported.temp`; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyPath(pub Vec<String>);

impl PropertyPath {
    /// The value at this path in `twin`, or `None` where the path is undefined.
    pub fn lookup<'v>(&self, twin: &'v Value) -> Option<&'v Value> {
        self.0
            .iter()
            .try_fold(twin, |value, segment| value.get(segment.as_str()))
    }

    fn last_segment(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }
}

/// A `WHERE` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        left: Operand,
        op: CompareOp,
        right: Operand,
    },
    /// `operand IN [...]`, or with `negated` `operand NIN [...]`.
    In {
        operand: Operand,
        values: Vec<Value>,
        negated: bool,
    },
    /// A function applied to a property, e.g. `IS_DEFINED(tags.x)`.
    Check {
        function: Function,
        path: PropertyPath,
    },
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(PropertyPath),
    Literal(Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=` or `<>`
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// A supported function; each takes a property path first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Function {
    IsDefined,
    IsNull,
    IsString,
    IsNumber,
    IsBool,
    IsObject,
    StartsWith(String),
    EndsWith(String),
}

impl Query {
    /// Whether `twin` (the service's twin JSON) satisfies the `WHERE` condition.
    pub fn matches(&self, twin: &Value) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|filter| filter.matches(twin))
    }

    /// The result row for a matching twin: the twin itself for `SELECT *`, an object of
    /// aliases to values for a field list (undefined paths left out), and an empty object for
    /// `COUNT()`, whose single row the caller builds from [`Query::count_alias`].
    pub fn project(&self, twin: &Value) -> Value {
        match &self.projection {
            Projection::All => twin.clone(),
            Projection::Count { .. } => Value::Object(Map::new()),
            Projection::Fields(fields) => Value::Object(
                fields
                    .iter()
                    .filter_map(|field| {
                        let value = field.path.lookup(twin)?;
                        Some((field.alias.clone(), value.clone()))
                    })
                    .collect(),
            ),
        }
    }

    pub fn is_count(&self) -> bool {
        matches!(self.projection, Projection::Count { .. })
    }

    /// The key of the count in a `COUNT()` query's result row.
    pub fn count_alias(&self) -> Option<&str> {
        match &self.projection {
            Projection::Count { alias } => Some(alias),
            _ => None,
        }
    }
}

impl Expr {
    /// Evaluates the condition against `twin` with two-valued logic (see the module docs).
    pub fn matches(&self, twin: &Value) -> bool {
        match self {
            Self::And(terms) => terms.iter().all(|term| term.matches(twin)),
            Self::Or(terms) => terms.iter().any(|term| term.matches(twin)),
            Self::Not(inner) => !inner.matches(twin),
            Self::Compare { left, op, right } => match (left.resolve(twin), right.resolve(twin)) {
                (Some(left), Some(right)) => op.holds(left, right),
                _ => false,
            },
            Self::In {
                operand,
                values,
                negated,
            } => operand.resolve(twin).is_some_and(|value| {
                values.iter().any(|candidate| equals(value, candidate)) != *negated
            }),
            Self::Check { function, path } => function.holds(path.lookup(twin)),
        }
    }
}

impl Operand {
    fn resolve<'a>(&'a self, twin: &'a Value) -> Option<&'a Value> {
        match self {
            Self::Path(path) => path.lookup(twin),
            Self::Literal(value) => Some(value),
        }
    }
}

impl CompareOp {
    fn holds(self, left: &Value, right: &Value) -> bool {
        let order = || ordering(left, right);
        match self {
            Self::Eq => equals(left, right),
            Self::Ne => comparable(left, right) && !equals(left, right),
            Self::Lt => order() == Some(Ordering::Less),
            Self::Gt => order() == Some(Ordering::Greater),
            Self::Le => matches!(order(), Some(Ordering::Less | Ordering::Equal)),
            Self::Ge => matches!(order(), Some(Ordering::Greater | Ordering::Equal)),
        }
    }
}

impl Function {
    fn holds(&self, value: Option<&Value>) -> bool {
        match (self, value) {
            (Self::IsDefined, value) => value.is_some(),
            (_, None) => false,
            (Self::IsNull, Some(value)) => value.is_null(),
            (Self::IsString, Some(value)) => value.is_string(),
            (Self::IsNumber, Some(value)) => value.is_number(),
            (Self::IsBool, Some(value)) => value.is_boolean(),
            (Self::IsObject, Some(value)) => value.is_object(),
            (Self::StartsWith(prefix), Some(value)) => value
                .as_str()
                .is_some_and(|s| s.starts_with(prefix.as_str())),
            (Self::EndsWith(suffix), Some(value)) => {
                value.as_str().is_some_and(|s| s.ends_with(suffix.as_str()))
            }
        }
    }
}

/// Whether `=`/`!=` may compare the two: same JSON type, or either is `null`.
fn comparable(left: &Value, right: &Value) -> bool {
    left.is_null() || right.is_null() || discriminant(left) == discriminant(right)
}

fn equals(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b) == Some(Ordering::Equal),
        _ => left == right,
    }
}

/// The order of two numbers or two strings; `None` for anything else.
fn ordering(left: &Value, right: &Value) -> Option<Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => compare_numbers(a, b),
        (Value::String(a), Value::String(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        _ => None,
    }
}

/// Compares exactly when both are integers of one kind, as floating point otherwise.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return Some(a.cmp(&b));
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return Some(a.cmp(&b));
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// Parses a query, refusing anything outside the supported subset (see the module docs).
pub fn parse(query: &str) -> Result<Query, QueryError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(QueryError::TooLong { len: query.len() });
    }
    Parser::new(query)?.query()
}

/// The 1-based column (in characters) of the byte `offset` of `src`.
fn column(src: &str, offset: usize) -> usize {
    src.get(..offset).map_or(0, |before| before.chars().count()) + 1
}

fn syntax_error(src: &str, offset: usize, message: impl Into<String>) -> QueryError {
    QueryError::Syntax {
        column: column(src, offset),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A keyword, function name or property name.
    Word(String),
    Str(String),
    Num(Number),
    Op(CompareOp),
    /// Any other single character: `* , . ( ) [ ]` and ones no rule accepts.
    Punct(char),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// Byte offsets into the query.
    start: usize,
    end: usize,
}

struct Lexer<'q> {
    src: &'q str,
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos..)?.chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.src.get(self.pos..)?.chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat_while(&mut self, accept: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&accept) {
            self.bump();
        }
    }

    fn next_token(&mut self) -> Result<Token, QueryError> {
        self.eat_while(char::is_whitespace);
        let start = self.pos;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: Kind::End,
                start,
                end: start,
            });
        };
        let kind = match c {
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                self.eat_while(|c| c.is_alphanumeric() || c == '_' || c == '$');
                Kind::Word(self.src.get(start..self.pos).unwrap_or_default().to_owned())
            }
            '0'..='9' => self.number(start)?,
            '-' if self.peek().is_some_and(|c| c.is_ascii_digit()) => self.number(start)?,
            '\'' | '"' => Kind::Str(self.string(start, c)?),
            '=' => Kind::Op(CompareOp::Eq),
            '!' if self.peek() == Some('=') => {
                self.bump();
                Kind::Op(CompareOp::Ne)
            }
            '<' | '>' => {
                let op = match (c, self.peek()) {
                    ('<', Some('>')) => Some(CompareOp::Ne),
                    ('<', Some('=')) => Some(CompareOp::Le),
                    ('>', Some('=')) => Some(CompareOp::Ge),
                    _ => None,
                };
                match op {
                    Some(op) => {
                        self.bump();
                        Kind::Op(op)
                    }
                    None if c == '<' => Kind::Op(CompareOp::Lt),
                    None => Kind::Op(CompareOp::Gt),
                }
            }
            other => Kind::Punct(other),
        };
        Ok(Token {
            kind,
            start,
            end: self.pos,
        })
    }

    /// The rest of a number whose first character (a digit or `-`) is consumed.
    fn number(&mut self, start: usize) -> Result<Kind, QueryError> {
        self.eat_while(|c| c.is_ascii_digit());
        let mut integral = true;
        if self.peek() == Some('.') && self.peek_second().is_some_and(|c| c.is_ascii_digit()) {
            integral = false;
            self.bump();
            self.eat_while(|c| c.is_ascii_digit());
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            integral = false;
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(syntax_error(
                    self.src,
                    start,
                    "this number's exponent has no digits: write it like 1e3 or 2.5E-2",
                ));
            }
            self.eat_while(|c| c.is_ascii_digit());
        }
        let text = self.src.get(start..self.pos).unwrap_or_default();
        let exact = if integral {
            text.parse::<i64>()
                .map(Number::from)
                .or_else(|_| text.parse::<u64>().map(Number::from))
                .ok()
        } else {
            None
        };
        exact
            .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64))
            .map(Kind::Num)
            .ok_or_else(|| {
                syntax_error(
                    self.src,
                    start,
                    format!("the number {text} is out of range: use a smaller one"),
                )
            })
    }

    /// The rest of a string literal whose opening `quote` at `start` is consumed.
    fn string(&mut self, start: usize, quote: char) -> Result<String, QueryError> {
        let unterminated = || {
            syntax_error(
                self.src,
                start,
                format!("this string is never closed: end it with {quote}"),
            )
        };
        let mut text = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => return Err(unterminated()),
                Some(c) if c == quote => return Ok(text),
                Some('\\') => match self.bump() {
                    Some(c @ ('\'' | '"' | '\\')) => text.push(c),
                    Some(c) => {
                        return Err(syntax_error(
                            self.src,
                            at,
                            format!(
                                "unsupported escape \\{c}: strings support only \\' \\\" and \\\\"
                            ),
                        ));
                    }
                    None => return Err(unterminated()),
                },
                Some(c) => text.push(c),
            }
        }
    }
}

struct Parser<'q> {
    src: &'q str,
    tokens: Vec<Token>,
    /// Returned when reading past the last token; `tokens` ends with one like it anyway.
    end: Token,
    pos: usize,
    /// How many parentheses and `NOT`s enclose the current point.
    nesting: usize,
}

impl<'q> Parser<'q> {
    fn new(src: &'q str) -> Result<Self, QueryError> {
        let mut lexer = Lexer { src, pos: 0 };
        let mut tokens = Vec::new();
        let end = loop {
            let token = lexer.next_token()?;
            if token.kind == Kind::End {
                break token;
            }
            tokens.push(token);
        };
        tokens.push(end.clone());
        Ok(Self {
            src,
            tokens,
            end,
            pos: 0,
            nesting: 0,
        })
    }

    fn nth(&self, n: usize) -> &Token {
        self.tokens.get(self.pos + n).unwrap_or(&self.end)
    }

    fn peek(&self) -> &Token {
        self.nth(0)
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        self.pos = (self.pos + 1).min(self.tokens.len());
        token
    }

    fn at_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().kind, Kind::Word(word) if word.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.at_keyword(keyword);
        if found {
            self.advance();
        }
        found
    }

    fn nth_is_punct(&self, n: usize, c: char) -> bool {
        self.nth(n).kind == Kind::Punct(c)
    }

    fn eat_punct(&mut self, c: char) -> bool {
        let found = self.nth_is_punct(0, c);
        if found {
            self.advance();
        }
        found
    }

    fn describe(&self, token: &Token) -> String {
        if token.kind == Kind::End {
            return "the end of the query".to_owned();
        }
        let text = self.src.get(token.start..token.end).unwrap_or_default();
        let mut shown: String = text.chars().take(40).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        match token.kind {
            // String literals show with their own quotes.
            Kind::Str(_) => shown,
            _ => format!("'{shown}'"),
        }
    }

    /// A syntax error at the next token: what was `expected` and what is there.
    fn unexpected(&self, expected: &str) -> QueryError {
        let token = self.peek();
        syntax_error(
            self.src,
            token.start,
            format!("{expected}; found {}", self.describe(token)),
        )
    }

    fn unsupported(&self, token: &Token, what: String, supported: &'static str) -> QueryError {
        QueryError::Unsupported {
            column: column(self.src, token.start),
            what,
            supported,
        }
    }

    fn query(&mut self) -> Result<Query, QueryError> {
        if !self.eat_keyword("SELECT") {
            return Err(self.unexpected("expected SELECT at the start of the query"));
        }
        let top = if self.eat_keyword("TOP") {
            Some(self.top()?)
        } else {
            None
        };
        let projection = self.projection()?;
        self.from(&projection)?;
        let collection = self.collection()?;
        let filter = if self.eat_keyword("WHERE") {
            Some(self.or_expr()?)
        } else {
            None
        };
        self.end_of_query(filter.is_some())?;
        Ok(Query {
            collection,
            top,
            projection,
            filter,
        })
    }

    fn top(&mut self) -> Result<usize, QueryError> {
        let count = match &self.peek().kind {
            Kind::Num(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            _ => None,
        };
        let Some(count) = count else {
            return Err(self.unexpected(
                "TOP needs a whole number of rows, e.g. SELECT TOP 10 * FROM devices",
            ));
        };
        self.advance();
        Ok(count)
    }

    fn projection(&mut self) -> Result<Projection, QueryError> {
        if self.eat_punct('*') {
            return Ok(Projection::All);
        }
        if self.at_keyword("COUNT") && self.nth_is_punct(1, '(') {
            self.advance();
            self.advance();
            if !self.eat_punct(')') {
                return Err(self.unexpected("COUNT() takes no arguments: expected ')'"));
            }
            let alias = if self.eat_keyword("AS") {
                self.alias()?
            } else {
                DEFAULT_COUNT_ALIAS.to_owned()
            };
            return Ok(Projection::Count { alias });
        }
        let mut fields = vec![self.field()?];
        while self.eat_punct(',') {
            fields.push(self.field()?);
        }
        Ok(Projection::Fields(fields))
    }

    fn field(&mut self) -> Result<Field, QueryError> {
        let token = self.peek().clone();
        match &token.kind {
            Kind::Word(name) if self.nth_is_punct(1, '(') => Err(self.unsupported(
                &token,
                format!("the function {name}() in SELECT"),
                SELECT_FORMS,
            )),
            Kind::Word(name) if !is_reserved(name) && !is_literal_word(name) => {
                let path = self.path()?;
                let alias = if self.eat_keyword("AS") {
                    self.alias()?
                } else {
                    path.last_segment().to_owned()
                };
                Ok(Field { path, alias })
            }
            Kind::Word(_) | Kind::End => {
                Err(self.unexpected("expected *, COUNT() or property paths after SELECT"))
            }
            _ => Err(self.unsupported(
                &token,
                format!("selecting {}", self.describe(&token)),
                SELECT_FORMS,
            )),
        }
    }

    fn alias(&mut self) -> Result<String, QueryError> {
        match &self.peek().kind {
            Kind::Word(name) if !is_reserved(name) => {
                let name = name.clone();
                self.advance();
                Ok(name)
            }
            _ => Err(self.unexpected("expected a name after AS")),
        }
    }

    /// `FROM`, which ends the selection; operators before it mean a selected expression.
    fn from(&mut self, projection: &Projection) -> Result<(), QueryError> {
        if self.eat_keyword("FROM") {
            return Ok(());
        }
        let token = self.peek();
        let operator = matches!(token.kind, Kind::Op(_))
            || matches!(token.kind, Kind::Punct(c) if "+-*/%|&^([".contains(c));
        if operator && matches!(projection, Projection::Fields(_)) {
            return Err(self.unsupported(
                token,
                format!("the expression {} in SELECT", self.describe(token)),
                SELECT_FORMS,
            ));
        }
        Err(self.unexpected("expected FROM after the selection"))
    }

    fn collection(&mut self) -> Result<Collection, QueryError> {
        let token = self.peek().clone();
        let Kind::Word(name) = &token.kind else {
            return Err(self.unexpected("expected devices or devices.modules after FROM"));
        };
        if !name.eq_ignore_ascii_case("devices") {
            return Err(self.unsupported(&token, format!("FROM {name}"), QUERY_FORMS));
        }
        self.advance();
        if !self.eat_punct('.') {
            return Ok(Collection::Devices);
        }
        let member = self.peek().clone();
        match &member.kind {
            Kind::Word(word) if word.eq_ignore_ascii_case("modules") => {
                self.advance();
                Ok(Collection::Modules)
            }
            Kind::Word(word) => {
                Err(self.unsupported(&member, format!("FROM devices.{word}"), QUERY_FORMS))
            }
            _ => Err(self.unexpected("expected modules after 'devices.'")),
        }
    }

    fn end_of_query(&self, after_where: bool) -> Result<(), QueryError> {
        let token = self.peek();
        let clause = match &token.kind {
            Kind::End => return Ok(()),
            Kind::Word(word) if word.eq_ignore_ascii_case("GROUP") => "GROUP BY",
            Kind::Word(word) if word.eq_ignore_ascii_case("ORDER") => "ORDER BY",
            Kind::Word(word) if word.eq_ignore_ascii_case("JOIN") => "JOIN",
            _ if after_where => {
                return Err(self.unexpected("expected AND, OR or the end of the query"));
            }
            _ => return Err(self.unexpected("expected WHERE or the end of the query")),
        };
        Err(self.unsupported(token, clause.to_owned(), QUERY_FORMS))
    }

    /// Counts one more enclosing parenthesis or `NOT` at `token`.
    fn enter(&mut self, token: &Token) -> Result<(), QueryError> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(QueryError::TooDeep {
                column: column(self.src, token.start),
            });
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting = self.nesting.saturating_sub(1);
    }

    fn or_expr(&mut self) -> Result<Expr, QueryError> {
        let first = self.and_expr()?;
        if !self.at_keyword("OR") {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.eat_keyword("OR") {
            terms.push(self.and_expr()?);
        }
        Ok(Expr::Or(terms))
    }

    fn and_expr(&mut self) -> Result<Expr, QueryError> {
        let first = self.unary()?;
        if !self.at_keyword("AND") {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.eat_keyword("AND") {
            terms.push(self.unary()?);
        }
        Ok(Expr::And(terms))
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if !self.at_keyword("NOT") {
            return self.primary();
        }
        let token = self.advance();
        self.enter(&token)?;
        let inner = self.unary()?;
        self.leave();
        Ok(Expr::Not(Box::new(inner)))
    }

    fn primary(&mut self) -> Result<Expr, QueryError> {
        let token = self.peek().clone();
        match &token.kind {
            Kind::Punct('(') => {
                self.advance();
                self.enter(&token)?;
                let inner = self.or_expr()?;
                if !self.eat_punct(')') {
                    let column = column(self.src, token.start);
                    return Err(self
                        .unexpected(&format!("expected ')' to close the '(' at column {column}")));
                }
                self.leave();
                Ok(inner)
            }
            Kind::Word(name) if self.nth_is_punct(1, '(') => self.function(&token, name),
            _ => self.comparison(),
        }
    }

    fn function(&mut self, token: &Token, name: &str) -> Result<Expr, QueryError> {
        let upper = name.to_ascii_uppercase();
        let simple = match upper.as_str() {
            "IS_DEFINED" => Some(Function::IsDefined),
            "IS_NULL" => Some(Function::IsNull),
            "IS_STRING" => Some(Function::IsString),
            "IS_NUMBER" => Some(Function::IsNumber),
            "IS_BOOL" => Some(Function::IsBool),
            "IS_OBJECT" => Some(Function::IsObject),
            "STARTSWITH" | "ENDSWITH" => None,
            _ => {
                return Err(self.unsupported(token, format!("the function {name}"), FUNCTIONS));
            }
        };
        let usage = match simple {
            Some(_) => format!("{upper} takes one property path, e.g. {upper}(tags.location)"),
            None => format!(
                "{upper} takes a property path and a string, e.g. {upper}(deviceId, 'sensor-')"
            ),
        };
        self.advance();
        self.advance();
        if !matches!(&self.peek().kind, Kind::Word(word) if !is_reserved(word)) {
            return Err(self.unexpected(&usage));
        }
        let path = self.path()?;
        let function = match simple {
            Some(function) => function,
            None => {
                if !self.eat_punct(',') {
                    return Err(self.unexpected(&usage));
                }
                let Kind::Str(text) = self.peek().kind.clone() else {
                    return Err(self.unexpected(&usage));
                };
                self.advance();
                if upper == "STARTSWITH" {
                    Function::StartsWith(text)
                } else {
                    Function::EndsWith(text)
                }
            }
        };
        if !self.eat_punct(')') {
            return Err(self.unexpected(&usage));
        }
        Ok(Expr::Check { function, path })
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.operand()?;
        let token = self.peek().clone();
        match &token.kind {
            Kind::Op(op) => {
                self.advance();
                let right = self.operand()?;
                Ok(Expr::Compare {
                    left,
                    op: *op,
                    right,
                })
            }
            Kind::Word(word)
                if word.eq_ignore_ascii_case("IN") || word.eq_ignore_ascii_case("NIN") =>
            {
                self.advance();
                let values = self.list()?;
                Ok(Expr::In {
                    operand: left,
                    values,
                    negated: word.eq_ignore_ascii_case("NIN"),
                })
            }
            Kind::Word(word)
                if word.eq_ignore_ascii_case("NOT")
                    && matches!(&self.nth(1).kind, Kind::Word(next) if next.eq_ignore_ascii_case("IN")) =>
            {
                Err(self.unsupported(&token, "NOT IN (write NIN)".to_owned(), CONDITIONS))
            }
            Kind::Word(word) if !is_reserved(word) || word.eq_ignore_ascii_case("NOT") => {
                Err(self.unsupported(&token, format!("the operator {word}"), CONDITIONS))
            }
            Kind::Punct(c) if "+-*/%|&^!".contains(*c) => {
                Err(self.unsupported(&token, format!("the operator '{c}'"), CONDITIONS))
            }
            _ => Err(self.unexpected("expected a comparison (= != <> < > <= >=), IN or NIN")),
        }
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        if let Some(value) = self.literal() {
            return Ok(Operand::Literal(value));
        }
        match &self.peek().kind {
            Kind::Word(word) if !is_reserved(word) => Ok(Operand::Path(self.path()?)),
            _ => Err(self.unexpected("expected a property path or a value")),
        }
    }

    /// A string, number, `true`, `false` or `null`, consumed if it is next.
    fn literal(&mut self) -> Option<Value> {
        let value = match &self.peek().kind {
            Kind::Str(text) => Value::String(text.clone()),
            Kind::Num(number) => Value::Number(number.clone()),
            Kind::Word(word) if word.eq_ignore_ascii_case("true") => Value::Bool(true),
            Kind::Word(word) if word.eq_ignore_ascii_case("false") => Value::Bool(false),
            Kind::Word(word) if word.eq_ignore_ascii_case("null") => Value::Null,
            _ => return None,
        };
        self.advance();
        Some(value)
    }

    fn list(&mut self) -> Result<Vec<Value>, QueryError> {
        if !self.eat_punct('[') {
            return Err(self.unexpected("expected a list in brackets, e.g. IN ['a', 'b']"));
        }
        let mut values = Vec::new();
        if self.eat_punct(']') {
            return Ok(values);
        }
        loop {
            let Some(value) = self.literal() else {
                return Err(
                    self.unexpected("expected a string, number, true, false or null in the list")
                );
            };
            values.push(value);
            if self.eat_punct(']') {
                return Ok(values);
            }
            if !self.eat_punct(',') {
                return Err(self.unexpected("expected ',' or ']' in the list"));
            }
        }
    }

    fn path(&mut self) -> Result<PropertyPath, QueryError> {
        let mut segments = match &self.peek().kind {
            Kind::Word(word) if !is_reserved(word) => vec![word.clone()],
            _ => return Err(self.unexpected("expected a property path")),
        };
        self.advance();
        while self.eat_punct('.') {
            let Kind::Word(word) = &self.peek().kind else {
                return Err(self.unexpected("expected a property name after '.'"));
            };
            segments.push(word.clone());
            self.advance();
        }
        Ok(PropertyPath(segments))
    }
}

fn is_reserved(word: &str) -> bool {
    RESERVED
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(word))
}

fn is_literal_word(word: &str) -> bool {
    ["true", "false", "null"]
        .iter()
        .any(|literal| literal.eq_ignore_ascii_case(word))
}
