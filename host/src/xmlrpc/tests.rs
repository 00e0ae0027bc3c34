//! Literal XML in, values out, and back.

use super::*;

/// What Python's `xmlrpc.client` sends for `lock('resource1', 'client1')`.
const PYTHON_LOCK_CALL: &str = "<?xml version='1.0'?>
<methodCall>
<methodName>lock</methodName>
<params>
<param>
<value><string>resource1</string></value>
</param>
<param>
<value><string>client1</string></value>
</param>
</params>
</methodCall>
";

fn value_of(xml: &str) -> Result<Value, ParseError> {
    let call = format!(
        "<methodCall><methodName>m</methodName><params><param>{xml}</param></params></methodCall>"
    );
    parse_call(call.as_bytes()).map(|mut c| c.params.remove(0))
}

#[test]
fn decodes_what_python_sends() {
    let call = parse_call(PYTHON_LOCK_CALL.as_bytes()).unwrap();
    assert_eq!(
        call,
        MethodCall {
            name: "lock".into(),
            params: vec!["resource1".into(), "client1".into()],
        }
    );
}

#[test]
fn encodes_calls_as_python_does() {
    assert_eq!(
        encode_call("lock", &["resource1".into(), "client1".into()]),
        PYTHON_LOCK_CALL
    );
}

#[test]
fn encodes_responses_and_faults() {
    assert_eq!(
        encode_response(&Value::Nil),
        "<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n\
         <value><nil/></value>\n</param>\n</params>\n</methodResponse>\n"
    );
    assert_eq!(
        encode_fault(&Fault::new(1, "Resource already locked by 'a&b'")),
        "<?xml version='1.0'?>\n<methodResponse>\n<fault>\n<value><struct>\n\
         <member>\n<name>faultCode</name>\n<value><int>1</int></value>\n</member>\n\
         <member>\n<name>faultString</name>\n\
         <value><string>Resource already locked by 'a&amp;b'</string></value>\n</member>\n\
         </struct></value>\n</fault>\n</methodResponse>\n"
    );
}

#[test]
fn characters_xml_cannot_carry_are_replaced_in_what_is_encoded() {
    let xml = encode_response(&Value::from("a\u{1}b\u{ffff}\tc"));
    assert!(
        xml.contains("<string>a\u{fffd}b\u{fffd}\tc</string>"),
        "{xml}"
    );
    assert_eq!(
        parse_response(xml.as_bytes()),
        Ok(Ok(Value::from("a\u{fffd}b\u{fffd}\tc")))
    );
    // In a call they travel as they are, as Python sends them, for the
    // daemon to refuse.
    let call = encode_call("lock", &["r\u{0}".into(), "a\u{1}\u{ffff}&".into()]);
    assert!(call.contains("<string>r\u{0}</string>"), "{call}");
    assert!(
        call.contains("<string>a\u{1}\u{ffff}&amp;</string>"),
        "{call}"
    );
}

#[test]
fn decodes_every_value_type() {
    let cases: Vec<(&str, Value)> = vec![
        ("<value><int>-7</int></value>", Value::Int(-7)),
        ("<value><i4> 42 </i4></value>", Value::Int(42)),
        (
            "<value><i8>9223372036854775807</i8></value>",
            Value::I8(i64::MAX),
        ),
        ("<value><ex:i8>-5</ex:i8></value>", Value::I8(-5)),
        ("<value><boolean>1</boolean></value>", Value::Bool(true)),
        ("<value><boolean>0</boolean></value>", Value::Bool(false)),
        ("<value><double>-1.5</double></value>", Value::Double(-1.5)),
        (
            "<value><string>a &lt;b&gt; &amp; &#x263A;</string></value>",
            "a <b> & ☺".into(),
        ),
        (
            "<value><string><![CDATA[<raw>]]></string></value>",
            "<raw>".into(),
        ),
        ("<value><string/></value>", "".into()),
        ("<value>untyped</value>", "untyped".into()),
        ("<value>  spaced  </value>", "  spaced  ".into()),
        ("<value></value>", "".into()),
        ("<value/>", "".into()),
        (
            "<value><dateTime.iso8601>19980717T14:08:55</dateTime.iso8601></value>",
            Value::DateTime("19980717T14:08:55".into()),
        ),
        (
            "<value><base64>aGVs\nbG8=</base64></value>",
            Value::Base64(b"hello".to_vec()),
        ),
        ("<value><nil/></value>", Value::Nil),
        ("<value><ex:nil/></value>", Value::Nil),
        (
            "<value><array><data><value><int>1</int></value><value>x</value></data></array></value>",
            Value::Array(vec![Value::Int(1), "x".into()]),
        ),
        (
            "<value><array><data/></array></value>",
            Value::Array(vec![]),
        ),
        (
            "<value><struct><member><name>a</name><value><nil/></value></member>\
             <member><name>b</name><value>c</value></member></struct></value>",
            Value::Struct(vec![("a".into(), Value::Nil), ("b".into(), "c".into())]),
        ),
    ];
    for (xml, want) in cases {
        assert_eq!(value_of(xml), Ok(want), "{xml}");
    }
}

#[test]
fn round_trips_through_encode_and_decode() {
    let value = Value::Struct(vec![
        ("text".into(), "a\rb\nc\t<&>'\"ü".into()),
        ("int".into(), Value::Int(i32::MIN)),
        ("i8".into(), Value::I8(i64::MIN)),
        ("bool".into(), Value::Bool(true)),
        ("double".into(), Value::Double(0.1)),
        ("date".into(), Value::DateTime("20261126T08:00:00".into())),
        ("bytes".into(), Value::Base64(vec![0, 1, 2, 255])),
        ("nil".into(), Value::Nil),
        ("empty".into(), "".into()),
        (
            "list".into(),
            Value::Array(vec![Value::Array(vec![]), Value::Struct(vec![])]),
        ),
    ]);
    let xml = encode_response(&value);
    assert_eq!(parse_response(xml.as_bytes()), Ok(Ok(value)));
    let fault = Fault::new(-32603, "x");
    assert_eq!(
        parse_response(encode_fault(&fault).as_bytes()),
        Ok(Err(fault))
    );
}

#[test]
fn refuses_what_is_not_well_formed() {
    for bad in [
        "",
        "<methodCall>",
        "<methodCall></methodResponse>",
        "<a/><b/>",
        "<methodCall><methodName>m</methodName></methodCall>trailing",
        "<!DOCTYPE x [<!ENTITY e 'x'>]><methodCall><methodName>&e;</methodName></methodCall>",
        "<methodCall><methodName>&undefined;</methodName></methodCall>",
        "<methodCall><methodName>&#xD800;</methodName></methodCall>",
    ] {
        assert!(
            matches!(
                parse_call(bad.as_bytes()),
                Err(ParseError::NotWellFormed(_))
            ),
            "{bad:?}: {:?}",
            parse_call(bad.as_bytes())
        );
    }
    assert!(matches!(
        parse_call(b"\xff\xfe<a/>"),
        Err(ParseError::NotWellFormed(_))
    ));
}

#[test]
fn refuses_what_is_not_a_method_call() {
    let deep = format!(
        "{}<value>x</value>{}",
        "<value><array><data>".repeat(100),
        "</data></array></value>".repeat(100)
    );
    for bad in [
        "<methodResponse/>",
        "<methodCall/>",
        "<methodCall><methodName></methodName></methodCall>",
        "<methodCall><methodName>m</methodName><params><param/></params></methodCall>",
        "<methodCall><methodName>m</methodName><extra/></methodCall>",
    ] {
        assert!(
            matches!(parse_call(bad.as_bytes()), Err(ParseError::Invalid(_))),
            "{bad:?}: {:?}",
            parse_call(bad.as_bytes())
        );
    }
    for bad in [
        "<value><int>1.5</int></value>",
        "<value><int>99999999999</int></value>",
        "<value><boolean>yes</boolean></value>",
        "<value><base64>!!</base64></value>",
        "<value><unknown>1</unknown></value>",
        "<value>text<string>and a type</string></value>",
        "<value><struct><member><value>no name</value></member></struct></value>",
        deep.as_str(),
    ] {
        assert!(
            matches!(value_of(bad), Err(ParseError::Invalid(_))),
            "{bad:?}: {:?}",
            value_of(bad)
        );
    }
}

#[test]
fn a_call_without_params_has_none() {
    let call = parse_call(b"<methodCall><methodName>system.listMethods</methodName></methodCall>");
    assert_eq!(call.unwrap().params, vec![]);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any value the encoder can be given; doubles finite (XML-RPC has no
    /// NaN or infinity) and date-times in the form the decoder keeps.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i32>().prop_map(Value::Int),
            any::<i64>().prop_map(Value::I8),
            any::<bool>().prop_map(Value::Bool),
            any::<String>().prop_map(Value::String),
            (-1e300f64..1e300).prop_map(Value::Double),
            "[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}".prop_map(Value::DateTime),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Base64),
            Just(Value::Nil),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((any::<String>(), inner), 0..4).prop_map(Value::Struct),
            ]
        })
    }

    /// Text XML 1.0 can carry: no control characters but tab, CR and LF.
    fn xml_text(s: &str) -> bool {
        s.chars()
            .all(|c| !c.is_control() || c == '\t' || c == '\n' || c == '\r')
    }

    fn xml_safe(v: &Value) -> bool {
        match v {
            Value::String(s) => xml_text(s),
            Value::Struct(members) => members.iter().all(|(n, v)| xml_text(n) && xml_safe(v)),
            Value::Array(items) => items.iter().all(xml_safe),
            _ => true,
        }
    }

    /// Text rich in what an encoder must take care of.
    fn tricky_text() -> impl Strategy<Value = String> {
        let special = proptest::sample::select(vec![
            '<',
            '>',
            '&',
            '\r',
            '\n',
            '\t',
            '\0',
            '\u{1}',
            '\u{b}',
            '\u{c}',
            '\u{e}',
            '\u{1f}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{fffd}',
            '\u{ef}',
            '\u{feff}',
            '\u{10ffff}',
            '"',
            '\'',
        ]);
        proptest::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(|chars| chars.into_iter().collect())
    }

    /// Whether XML 1.0 cannot carry `c`.
    fn foreign(c: char) -> bool {
        matches!(c, '\0'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
    }

    /// `text` escaped a character at a time; characters XML cannot carry
    /// become `instead`, or stay as they are.
    fn escaped(text: &str, instead: Option<char>) -> String {
        let mut out = String::new();
        for c in text.chars() {
            match c {
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '&' => out.push_str("&amp;"),
                '\r' => out.push_str("&#13;"),
                c if foreign(c) => out.push(instead.unwrap_or(c)),
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn calls_round_trip(name in "[A-Za-z_.]{1,20}", params in proptest::collection::vec(value(), 0..4)) {
            prop_assume!(params.iter().all(xml_safe));
            let xml = encode_call(&name, &params);
            let call = parse_call(xml.as_bytes()).unwrap();
            prop_assert_eq!(call, MethodCall { name, params });
        }

        #[test]
        fn responses_round_trip(v in value()) {
            prop_assume!(xml_safe(&v));
            let xml = encode_response(&v);
            prop_assert_eq!(parse_response(xml.as_bytes()).unwrap(), Ok(v));
        }

        #[test]
        fn any_text_is_escaped_as_xml_needs(text in tricky_text()) {
            let call = encode_call(&text, &[]);
            let name = call
                .split_once("<methodName>")
                .and_then(|(_, rest)| rest.split_once("</methodName>"))
                .unwrap()
                .0;
            prop_assert_eq!(name, escaped(&text, None));
            let answer = encode_response(&Value::String(text.clone()));
            prop_assert!(answer.contains(&escaped(&text, Some('\u{fffd}'))), "{}", answer);
            let carried: String = text
                .chars()
                .map(|c| if foreign(c) { '\u{fffd}' } else { c })
                .collect();
            prop_assert_eq!(parse_response(answer.as_bytes()).unwrap(), Ok(Value::String(carried)));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_call(&bytes);
            let _ = parse_response(&bytes);
        }

        #[test]
        fn any_xml_like_text_decodes_or_fails_without_panicking(
            text in "(<[a-zA-Z/?!]{0,12}[ a-z=\"']{0,6}>|[a-z0-9&;#]{0,6}){0,30}"
        ) {
            let _ = parse_call(text.as_bytes());
            let _ = parse_response(text.as_bytes());
        }
    }
}

#[test]
fn values_nested_past_64_levels_are_refused() {
    let nested = |depth: usize| {
        format!(
            "{}<value>x</value>{}",
            "<value><array><data>".repeat(depth),
            "</data></array></value>".repeat(depth)
        )
    };
    assert!(value_of(&nested(63)).is_ok());
    let refused = value_of(&nested(100_000)).unwrap_err();
    assert!(
        refused.to_string().contains("nested deeper than 64"),
        "{refused}"
    );
}
