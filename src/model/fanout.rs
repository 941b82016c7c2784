//! Fan-out (`for_each`, SPEC §2.2): which items a task runs over, how an item shows, when the
//! next items may start, and what the fanned-out task is to its dependents.
//!
//! The items come from one of three places — a rendered template ([`items_from_rendered`]), a
//! literal TOML array ([`items_from_list`]) or a matrix table ([`matrix_items`]) — and all
//! three pass the same caps ([`MAX_ITEMS`], [`MAX_ITEM_BYTES`], [`MAX_ITEMS_TOTAL_BYTES`]),
//! so a fan-out is bounded whatever it was written as. [`FanOut`] is one fanned-out task in one
//! job run: per-item states, `for_each_concurrency`, and the node's outcome, each event in
//! O(1) (amortized) so 10,000 items cost no more per item than one.
//!
//! [`label`] is how every view names a task run: `review`, `review#2`, `fetch[3]`, `fetch#2[3]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::model::TaskState;

/// The most items one task run of a fanned-out task may have (one task run each). 10,000 is
/// the size the engine is built and benchmarked for; ten times that is refused rather than
/// letting one template fill the store with task runs.
pub const MAX_ITEMS: usize = 100_000;
/// The largest item, as the JSON text stored on its task run (`TaskRunRecord::item`): the
/// default `output_max_bytes`, since an item is usually one upstream output or a piece of one.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;
/// All items of one fan-out together, as stored: a matrix multiplies its values, so the
/// per-item cap alone would let a few axes describe gigabytes.
pub const MAX_ITEMS_TOTAL_BYTES: usize = 16 * 1024 * 1024;

/// The items of a rendered `for_each` template.
///
/// - Text whose first non-blank character is `[` is a JSON array, and must be one: a broken
///   array (an agent's trailing comma, a cut-off output) is an error, never read as lines.
/// - Text that is one JSON object is an error: read as lines, a pretty-printed object would
///   become one item per brace and field; the list the user wanted is inside it. (JSON Lines
///   of one line is such an object: a list of JSON values should be written as an array.)
/// - Anything else is one item (a JSON string) per line, each line trimmed of surrounding
///   whitespace (including a `\r`), blank lines skipped: `"a\n\n  b \n"` → `["a", "b"]`, as a
///   shell loop over `ls` or a Jinja `{% for %}` with its indentation would be read. A line
///   that looks like JSON (`42`, `true`, `{"a":1}` among other lines) stays a string, so a
///   list does not change meaning with how many lines it has. Exact strings with edge
///   whitespace need a JSON array.
/// - Blank text is no items (the task then succeeds at once).
pub fn items_from_rendered(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Array(items)) => items_from_list(items),
            Ok(_) | Err(_) => Err(not_an_array(trimmed)),
        };
    }
    if trimmed.starts_with('{') && matches!(serde_json::from_str::<Value>(trimmed), Ok(Value::Object(_))) {
        return Err("for_each: the rendered text is a JSON object, not a list; it needs a JSON array or one \
                    item per line (pick the list inside the object)"
            .to_string());
    }
    let lines = || text.lines().map(str::trim).filter(|line| !line.is_empty());
    check_count(lines().count())?;
    items_from_list(lines().map(|line| Value::String(line.to_string())).collect())
}

fn not_an_array(text: &str) -> String {
    let why = match serde_json::from_str::<Value>(text) {
        Ok(_) => "it is JSON, but not one array".to_string(),
        Err(e) => e.to_string(),
    };
    format!("for_each: the rendered text starts with `[` but is not a JSON array ({why})")
}

/// Checks a list of items (a literal `for_each` array, or one read by [`items_from_rendered`])
/// against the caps, and hands it back.
pub fn items_from_list(items: Vec<Value>) -> Result<Vec<Value>, String> {
    check_count(items.len())?;
    let mut total = 0;
    for (index, item) in items.iter().enumerate() {
        total = admit_item(index, item, total)?;
    }
    Ok(items)
}

/// One object per combination of a matrix's axes (`for_each = { os = [...], py = [...] }`),
/// keys in the axes' (file) order, the first axis varying slowest as GitHub Actions orders a
/// matrix: `os=linux,py=3.11`, `os=linux,py=3.12`, `os=mac,py=3.11` …
///
/// An axis with no values, or no axes at all, makes no combinations: no items. Axis names are
/// unique (they are a TOML table's keys). The count is checked before anything is built.
pub fn matrix_items(axes: &[(String, Vec<Value>)]) -> Result<Vec<Value>, String> {
    if axes.is_empty() {
        return Ok(Vec::new());
    }
    let count = axes.iter().try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()));
    let count = count.ok_or_else(|| format!("for_each: the matrix has more than {MAX_ITEMS} combinations"))?;
    check_count(count)?;
    let mut items = Vec::with_capacity(count);
    let mut total = 0;
    for index in 0..count {
        let item = combination(axes, index);
        total = admit_item(index, &item, total)?;
        items.push(item);
    }
    Ok(items)
}

/// Combination number `index`, read as a number in mixed radix whose last digit is the last
/// axis: the last axis varies fastest.
fn combination(axes: &[(String, Vec<Value>)], mut index: usize) -> Value {
    let mut picks = vec![0; axes.len()];
    for (pick, (_, values)) in picks.iter_mut().zip(axes).rev() {
        *pick = index % values.len();
        index /= values.len();
    }
    let object: Map<String, Value> =
        axes.iter().zip(picks).map(|((name, values), pick)| (name.clone(), values[pick].clone())).collect();
    Value::Object(object)
}

fn check_count(count: usize) -> Result<(), String> {
    if count > MAX_ITEMS {
        return Err(format!("for_each: {count} items, more than the {MAX_ITEMS} one task may fan out to"));
    }
    Ok(())
}

/// Adds item `index` to the `total` bytes so far, or says which cap it breaks.
fn admit_item(index: usize, item: &Value, total: usize) -> Result<usize, String> {
    let size = item_json(item).len();
    if size > MAX_ITEM_BYTES {
        return Err(format!("for_each: item {index} is {size} bytes as JSON, more than {MAX_ITEM_BYTES}"));
    }
    let total = total + size;
    if total > MAX_ITEMS_TOTAL_BYTES {
        return Err(format!(
            "for_each: the items take more than {MAX_ITEMS_TOTAL_BYTES} bytes as JSON (at item {index}); \
             pass big values as files and fan out over their paths"
        ));
    }
    Ok(total)
}

/// How `{{ item }}` renders: a string bare (`a.txt`, not `"a.txt"`), anything else as its JSON
/// text (`42`, `{"os":"linux"}`), numbers never with an exponent.
pub fn item_text(item: &Value) -> String {
    match item {
        Value::String(text) => text.clone(),
        other => item_json(other),
    }
}

/// An item as stored on its task run (`TaskRunRecord::item`) and shown in `--json`: its JSON
/// text, so `"42"` and `42` stay apart.
pub fn item_json(item: &Value) -> String {
    crate::json::text(item)
}

/// How every view names a task run: the task, `#n` from its second iteration on, `[i]` for a
/// fan-out item, ` (undo)` for a compensation — `review`, `review#2`, `fetch[3]`, `fetch#2[3]`,
/// `deploy (undo)`. Headless lines, the TUI, `tasks` and `show` all use this one function.
pub fn label(task: &str, iteration: u32, item_index: Option<u32>, compensation: bool) -> String {
    let mut label = task.to_string();
    if iteration > 1 {
        let _ = write!(label, "#{iteration}");
    }
    if let Some(index) = item_index {
        let _ = write!(label, "[{index}]");
    }
    if compensation {
        label.push_str(" (undo)");
    }
    label
}

/// Where one item of a fan-out is. An item holds a slot of `for_each_concurrency` from the
/// moment it is queued until it ends for good, retries included: otherwise a batch of failing
/// items would start every other item while their retries wait, and exceed the cap when the
/// retries come due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    /// Not started: no task run yet.
    Pending,
    Queued,
    Running,
    /// Between attempts (includes `waiting` for a signal): still holds its slot.
    Retrying,
    Succeeded,
    /// Ended for good without succeeding: dead, cancelled, skipped, or a failure handled by a
    /// transition (`failed`). A person's retry may bring it back to `Queued`.
    Failed,
}

impl ItemState {
    const ALL: [ItemState; 6] = [
        ItemState::Pending,
        ItemState::Queued,
        ItemState::Running,
        ItemState::Retrying,
        ItemState::Succeeded,
        ItemState::Failed,
    ];

    fn slot(self) -> usize {
        self as usize
    }

    /// Holds a `for_each_concurrency` slot.
    pub fn in_flight(self) -> bool {
        matches!(self, ItemState::Queued | ItemState::Running | ItemState::Retrying)
    }
}

impl From<TaskState> for ItemState {
    /// An item's task run state, as the fan-out counts it.
    fn from(state: TaskState) -> ItemState {
        match state {
            TaskState::Pending => ItemState::Pending,
            TaskState::Queued => ItemState::Queued,
            TaskState::Running => ItemState::Running,
            TaskState::Retrying | TaskState::Waiting => ItemState::Retrying,
            TaskState::Succeeded => ItemState::Succeeded,
            TaskState::Dead | TaskState::Cancelled | TaskState::Skipped | TaskState::Failed => ItemState::Failed,
        }
    }
}

/// What a fanned-out task is to its dependents: one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanOutOutcome {
    /// Some item has not ended yet.
    Running,
    /// Every item succeeded (at once for no items).
    Succeeded,
    /// Every item ended, and at least one did not succeed.
    Failed,
}

/// One fanned-out task in one job run (one iteration of it): its items' states.
///
/// Items start in item order. After an item fails the others keep starting and running, as
/// independent branches do (SPEC §2.2 "Outcome"): the node fails only once every item ended,
/// so each item's result is known and a person who retries the dead item can still see the
/// node succeed without running the others again. `fail_fast` is the caller's: it cancels the
/// in-flight items, which then end `Failed` here.
#[derive(Debug, Clone)]
pub struct FanOut {
    states: Vec<ItemState>,
    counts: [usize; 6],
    /// Every item before it has started: where the search for pending items begins, so
    /// [`FanOut::next_to_start`] does not walk the started ones again.
    first_pending: usize,
}

impl FanOut {
    /// `total` items, none started.
    pub fn new(total: usize) -> FanOut {
        let mut counts = [0; 6];
        counts[ItemState::Pending.slot()] = total;
        FanOut { states: vec![ItemState::Pending; total], counts, first_pending: 0 }
    }

    pub fn total(&self) -> usize {
        self.states.len()
    }

    pub fn state(&self, index: usize) -> Option<ItemState> {
        self.states.get(index).copied()
    }

    /// How many items are in `state` (the TUI's `review ×12  9✓ 2⟳ 1✗`).
    pub fn count(&self, state: ItemState) -> usize {
        self.counts[state.slot()]
    }

    /// Items holding a `for_each_concurrency` slot.
    pub fn in_flight(&self) -> usize {
        ItemState::ALL.iter().filter(|s| s.in_flight()).map(|s| self.count(*s)).sum()
    }

    /// Item `index` moved to `state`. Refused: an index past the end, and going back to
    /// `Pending` from anything but `Failed` (an item in flight or succeeded never un-starts; a
    /// failed one a person retries waits for a slot again).
    pub fn set(&mut self, index: usize, state: ItemState) -> Result<(), String> {
        let total = self.total();
        let Some(old) = self.states.get_mut(index) else {
            return Err(format!("fan-out item {index} does not exist ({total} items)"));
        };
        if state == ItemState::Pending && !matches!(*old, ItemState::Pending | ItemState::Failed) {
            return Err(format!("fan-out item {index} already started; it cannot be pending again"));
        }
        self.counts[old.slot()] -= 1;
        self.counts[state.slot()] += 1;
        *old = state;
        if state == ItemState::Pending {
            self.first_pending = self.first_pending.min(index);
        }
        while self.states.get(self.first_pending).is_some_and(|s| *s != ItemState::Pending) {
            self.first_pending += 1;
        }
        Ok(())
    }

    /// The items to start now, in item order: as many pending ones as `concurrency`
    /// (`for_each_concurrency`; `None` = no cap) leaves slots for. The caller marks them
    /// `Queued`. A cap of 0 counts as 1, so a fan-out can never stall (config refuses 0).
    pub fn next_to_start(&self, concurrency: Option<u32>) -> Vec<usize> {
        let free = match concurrency {
            None => usize::MAX,
            Some(cap) => usize::try_from(cap.max(1)).unwrap_or(usize::MAX).saturating_sub(self.in_flight()),
        };
        let wanted = free.min(self.count(ItemState::Pending));
        let pending = self.states[self.first_pending..].iter().enumerate().filter(|(_, s)| **s == ItemState::Pending);
        pending.map(|(offset, _)| self.first_pending + offset).take(wanted).collect()
    }

    pub fn outcome(&self) -> FanOutOutcome {
        let succeeded = self.count(ItemState::Succeeded);
        if succeeded == self.total() {
            FanOutOutcome::Succeeded
        } else if succeeded + self.count(ItemState::Failed) == self.total() {
            FanOutOutcome::Failed
        } else {
            FanOutOutcome::Running
        }
    }
}

/// `{{ tasks.T.outputs }}` of a fanned-out task: one map per item, position = item index, so
/// `tasks.T.outputs[3]` is always item 3's. `outputs` holds (item index, that item's outputs),
/// in any order, one per item; an item missing from it has no outputs (an empty map), an index
/// past `total` is ignored.
pub fn outputs_in_item_order(
    total: usize,
    outputs: impl IntoIterator<Item = (usize, BTreeMap<String, String>)>,
) -> Vec<BTreeMap<String, String>> {
    let mut ordered = vec![BTreeMap::new(); total];
    for (index, item_outputs) in outputs {
        if let Some(slot) = ordered.get_mut(index) {
            *slot = item_outputs;
        }
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// One case of [`items_from_rendered`]: the text, and the items as JSON text or an error
    /// containing the given words.
    fn check(text: &str, want: Result<Value, &str>) {
        let got = items_from_rendered(text);
        match (&want, &got) {
            (Ok(items), Ok(got)) => assert_eq!(&Value::Array(got.clone()), items, "{text:?}"),
            (Err(words), Err(message)) => assert!(message.contains(words), "{text:?}: {message}"),
            _ => panic!("{text:?}: want {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn rendered_text_table() {
        check("a\nb\n", Ok(json!(["a", "b"])));
        check("a\n\nb\n", Ok(json!(["a", "b"])));
        check("  a  \r\n\t\n b\r\n", Ok(json!(["a", "b"])));
        check("one line", Ok(json!(["one line"])));
        check("", Ok(json!([])));
        check(" \n\n  \t", Ok(json!([])));
        check("[]", Ok(json!([])));
        check(" [1, \"two\", {\"k\": [3]}, null]\n", Ok(json!([1, "two", {"k": [3]}, null])));
        check("[\n  \"a\",\n  \"b\"\n]", Ok(json!(["a", "b"])));
        // A line that reads as another JSON value is still one line: the list does not change
        // meaning with its length.
        check("42", Ok(json!(["42"])));
        check("42\n43", Ok(json!(["42", "43"])));
        check("true", Ok(json!(["true"])));
        check("\"quoted\"", Ok(json!(["\"quoted\""])));
        check("{\"a\":1}\n{\"b\":2}", Ok(json!(["{\"a\":1}", "{\"b\":2}"])));
        check("{ not json", Ok(json!(["{ not json"])));
        check("[\"a\", \"b\",]", Err("starts with `[` but is not a JSON array (trailing comma"));
        check("[1, 2", Err("starts with `[` but is not a JSON array"));
        check("[ci] bump\n[docs] fix", Err("starts with `[` but is not a JSON array"));
        check("[1] [2]", Err("not a JSON array"));
        check("{\"files\": [\"a\"]}", Err("is a JSON object, not a list"));
        check("{\n  \"a\": 1\n}\n", Err("is a JSON object, not a list"));
        check("[\"x\"]", Ok(json!(["x"])));
    }

    #[test]
    fn ten_thousand_items_work_and_the_cap_names_the_count() {
        let lines: String = (0..10_000).map(|i| format!("file-{i}.txt\n")).collect();
        let items = items_from_rendered(&lines).expect("10,000 lines");
        assert_eq!((items.len(), &items[9_999]), (10_000, &json!("file-9999.txt")));
        let array = serde_json::to_string(&(0..10_000).collect::<Vec<_>>()).expect("json");
        assert_eq!(items_from_rendered(&array).expect("10,000 numbers").len(), 10_000);

        let too_many = "x\n".repeat(MAX_ITEMS + 1);
        check(&too_many, Err("for_each: 100001 items, more than the 100000"));
        let too_many: Vec<Value> = vec![json!(1); MAX_ITEMS + 1];
        assert!(items_from_list(too_many).is_err_and(|e| e.contains("100001 items")));
        assert_eq!(items_from_list(vec![json!(1); MAX_ITEMS]).map(|v| v.len()), Ok(MAX_ITEMS));
    }

    #[test]
    fn item_sizes_are_capped_one_by_one_and_together() {
        let big = "x".repeat(MAX_ITEM_BYTES);
        check(&format!("a\n{big}\n"), Err("item 1 is 65538 bytes as JSON, more than 65536"));
        let fits = "x".repeat(MAX_ITEM_BYTES - 2);
        assert!(items_from_list(vec![json!(fits)]).is_ok(), "exactly the cap, quotes included");
        let many = vec![json!(fits); MAX_ITEMS_TOTAL_BYTES / MAX_ITEM_BYTES + 1];
        assert!(items_from_list(many).is_err_and(|e| e.contains("more than 16777216 bytes as JSON (at item 256)")));
        // A matrix multiplies: three axes of 16 values of 20 KiB are 4,096 items (under the
        // count cap) of 60 KiB each (under the item cap), 240 MiB: refused at the total cap
        // instead of built.
        let axis =
            |name: &str| (name.to_string(), (0..16).map(|i| json!(format!("{i}{}", "v".repeat(20 * 1024)))).collect());
        let axes = vec![axis("a"), axis("b"), axis("c")];
        assert!(matrix_items(&axes).is_err_and(|e| e.contains("more than 16777216 bytes")));
    }

    fn matrix_check(axes: Value, want: Result<Value, &str>) {
        let axes: Vec<(String, Vec<Value>)> = match axes {
            Value::Object(map) => {
                map.into_iter().map(|(k, v)| (k, v.as_array().cloned().expect("an axis is an array"))).collect()
            }
            other => panic!("axes must be an object: {other}"),
        };
        let got = matrix_items(&axes).map(Value::Array);
        match (&want, &got) {
            (Ok(items), Ok(got)) => {
                assert_eq!(got, items);
                assert_eq!(item_json(got), item_json(items), "keys in file order");
            }
            (Err(words), Err(message)) => assert!(message.contains(words), "{message}"),
            _ => panic!("{axes:?}: want {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn matrix_table() {
        matrix_check(
            json!({"os": ["linux", "mac"], "py": ["3.11", "3.12"]}),
            Ok(json!([
                {"os": "linux", "py": "3.11"},
                {"os": "linux", "py": "3.12"},
                {"os": "mac", "py": "3.11"},
                {"os": "mac", "py": "3.12"},
            ])),
        );
        matrix_check(json!({"z": [1], "a": [true, false]}), Ok(json!([{"z": 1, "a": true}, {"z": 1, "a": false}])));
        matrix_check(json!({"os": ["linux"], "py": []}), Ok(json!([])));
        matrix_check(json!({}), Ok(json!([])));
        matrix_check(json!({"n": [{"deep": [1]}, null]}), Ok(json!([{"n": {"deep": [1]}}, {"n": null}])));
        let wide: Vec<i32> = (0..1000).collect();
        matrix_check(json!({"a": wide, "b": wide}), Err("for_each: 1000000 items, more than the 100000"));
        let huge = vec![(String::from("a"), vec![json!(0); 1 << 16]); 5];
        assert!(matrix_items(&huge).is_err_and(|e| e.contains("more than 100000 combinations")), "no overflow");
    }

    #[test]
    fn item_text_and_json() {
        let cases = [
            (json!("a b.txt"), "a b.txt", "\"a b.txt\""),
            (json!("42"), "42", "\"42\""),
            (json!(42), "42", "42"),
            (json!(0.000001), "0.000001", "0.000001"),
            (json!(null), "null", "null"),
            (
                json!({"os": "linux", "py": "3.11"}),
                "{\"os\":\"linux\",\"py\":\"3.11\"}",
                "{\"os\":\"linux\",\"py\":\"3.11\"}",
            ),
            (json!(["x", 1]), "[\"x\",1]", "[\"x\",1]"),
        ];
        for (item, text, stored) in cases {
            assert_eq!((item_text(&item).as_str(), item_json(&item).as_str()), (text, stored), "{item}");
        }
    }

    #[test]
    fn labels() {
        let cases = [
            (("review", 1, None, false), "review"),
            (("review", 2, None, false), "review#2"),
            (("fetch", 1, Some(3), false), "fetch[3]"),
            (("fetch", 2, Some(3), false), "fetch#2[3]"),
            (("fetch", 1, Some(0), false), "fetch[0]"),
            (("odd", 0, None, false), "odd"),
            (("deploy", 1, None, true), "deploy (undo)"),
            (("each", 1, Some(2), true), "each[2] (undo)"),
        ];
        for ((task, iteration, item, compensation), want) in cases {
            assert_eq!(label(task, iteration, item, compensation), want);
        }
    }

    /// Drives a fan-out of `total` items through `steps` (item, new state) and checks what
    /// starts next and the outcome after them.
    fn fan_check(total: usize, cap: Option<u32>, steps: &[(usize, ItemState)], next: &[usize], outcome: FanOutOutcome) {
        let mut fan = FanOut::new(total);
        for (index, state) in steps {
            fan.set(*index, *state).expect("a valid step");
        }
        assert_eq!(fan.next_to_start(cap), next, "{steps:?}");
        assert_eq!(fan.outcome(), outcome, "{steps:?}");
    }

    #[test]
    fn fan_out_table() {
        use FanOutOutcome as O;
        use ItemState::*;
        fan_check(0, Some(2), &[], &[], O::Succeeded);
        fan_check(3, None, &[], &[0, 1, 2], O::Running);
        fan_check(3, Some(2), &[], &[0, 1], O::Running);
        fan_check(3, Some(0), &[], &[0], O::Running);
        fan_check(3, Some(2), &[(0, Queued), (1, Running)], &[], O::Running);
        fan_check(3, Some(2), &[(0, Queued), (1, Retrying)], &[], O::Running);
        fan_check(3, Some(2), &[(0, Succeeded), (1, Running)], &[2], O::Running);
        // A failed item does not stop the others; the node fails once they all ended.
        fan_check(3, Some(1), &[(0, Failed)], &[1], O::Running);
        fan_check(3, Some(1), &[(0, Failed), (1, Succeeded), (2, Running)], &[], O::Running);
        fan_check(3, Some(1), &[(0, Failed), (1, Succeeded), (2, Succeeded)], &[], O::Failed);
        fan_check(2, None, &[(0, Succeeded), (1, Succeeded)], &[], O::Succeeded);
        // A person retries the dead item: the node is running again, and succeeds with it.
        fan_check(2, None, &[(0, Succeeded), (1, Failed), (1, Queued)], &[], O::Running);
        fan_check(2, None, &[(0, Succeeded), (1, Failed), (1, Queued), (1, Succeeded)], &[], O::Succeeded);
        // Rebuilt out of order after a restart: the gap is found.
        fan_check(4, Some(3), &[(2, Succeeded), (0, Running)], &[1, 3], O::Running);

        let mut fan = FanOut::new(2);
        assert!(fan.set(2, Queued).is_err_and(|e| e.contains("item 2 does not exist (2 items)")));
        fan.set(0, Queued).expect("start");
        assert!(fan.set(0, Pending).is_err_and(|e| e.contains("already started")));
        assert_eq!((fan.count(Queued), fan.count(Pending), fan.in_flight()), (1, 1, 1));
        // A failed item a person retries waits for a slot again, first in line.
        fan.set(1, Queued).expect("start");
        fan.set(0, Failed).expect("end");
        fan.set(0, Pending).expect("a retried failed item");
        assert_eq!(fan.next_to_start(Some(1)), [] as [usize; 0], "item 1 holds the only slot");
        assert_eq!(fan.next_to_start(Some(2)), [0]);

        let counted: Vec<ItemState> = TaskState::ALL.into_iter().map(ItemState::from).collect();
        assert_eq!(
            counted,
            [Pending, Queued, Running, Retrying, Succeeded, Failed, Failed, Failed, Retrying, Failed],
            "{:?}",
            TaskState::ALL
        );
    }

    #[test]
    fn outputs_follow_item_order() {
        let out = |v: &str| BTreeMap::from([("k".to_string(), v.to_string())]);
        let got = outputs_in_item_order(4, vec![(2, out("c")), (0, out("a")), (9, out("x")), (3, out("d"))]);
        assert_eq!(got, vec![out("a"), BTreeMap::new(), out("c"), out("d")]);
        assert!(outputs_in_item_order(0, vec![(0, out("a"))]).is_empty());
    }

    proptest! {
        #[test]
        fn a_matrix_is_every_combination_once(lens in proptest::collection::vec(0usize..5, 1..5)) {
            let axes: Vec<(String, Vec<Value>)> =
                lens.iter().enumerate().map(|(a, &n)| (format!("axis{a}"), (0..n).map(|v| json!(v)).collect())).collect();
            let items = matrix_items(&axes).expect("small");
            prop_assert_eq!(items.len(), lens.iter().product::<usize>());
            let mut seen = std::collections::HashSet::new();
            for item in &items {
                let picks: Vec<u64> = axes.iter().map(|(name, _)| item[name].as_u64().expect("a pick")).collect();
                prop_assert!(picks.iter().zip(&lens).all(|(p, n)| (*p as usize) < *n));
                prop_assert!(seen.insert(picks.clone()), "twice: {:?}", picks);
            }
            let mut sorted = items.iter().map(|i| axes.iter().map(|(n, _)| i[n].as_u64()).collect::<Vec<_>>()).collect::<Vec<_>>();
            let in_order = sorted.clone();
            sorted.sort();
            prop_assert_eq!(in_order, sorted, "first axis slowest");
        }

        /// Random ends and person retries: `next_to_start` never exceeds the cap, starts every
        /// item exactly once, and the outcome matches the states.
        #[test]
        fn next_to_start_respects_the_cap_and_starts_each_item_once(
            total in 0usize..60,
            cap in proptest::option::of(1u32..8),
            fates in proptest::collection::vec((any::<u8>(), 0u8..5), 0..400),
        ) {
            let mut fan = FanOut::new(total);
            let mut starts = vec![0u32; total];
            let mut fates = fates.into_iter();
            loop {
                for index in fan.next_to_start(cap) {
                    prop_assert_eq!(fan.state(index), Some(ItemState::Pending));
                    starts[index] += 1;
                    fan.set(index, ItemState::Queued).expect("start");
                }
                if let Some(cap) = cap {
                    prop_assert!(fan.in_flight() <= cap as usize);
                }
                let flying: Vec<usize> = (0..total).filter(|&i| fan.state(i).is_some_and(ItemState::in_flight)).collect();
                if flying.is_empty() {
                    break;
                }
                let (pick, fate) = fates.next().unwrap_or((0, 3));
                let index = flying[pick as usize % flying.len()];
                let to = [ItemState::Running, ItemState::Retrying, ItemState::Failed, ItemState::Succeeded, ItemState::Queued][fate as usize];
                fan.set(index, to).expect("an in-flight item moves");
            }
            prop_assert!(starts.iter().all(|&n| n == 1), "{:?}", starts);
            let all_ok = (0..total).all(|i| fan.state(i) == Some(ItemState::Succeeded));
            prop_assert_eq!(fan.outcome(), if all_ok { FanOutOutcome::Succeeded } else { FanOutOutcome::Failed });
        }
    }
}
