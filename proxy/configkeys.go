package proxy

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// yamlField is one key of a struct decoded from YAML, and where the
// struct holds its value (inline structs flattened, as yaml.v3 does).
type yamlField struct {
	name  string
	index []int
	typ   reflect.Type
}

// yamlFields lists the keys yaml.v3 decodes into struct type t: a field's
// tag name, else its lowercased name; "-" and unexported fields are none.
func yamlFields(t reflect.Type) []yamlField {
	var out []yamlField
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if tag == "-" || f.PkgPath != "" && !f.Anonymous {
			continue
		}
		if slices.Contains(strings.Split(opts, ","), "inline") && f.Type.Kind() == reflect.Struct {
			for _, in := range yamlFields(f.Type) {
				in.index = append([]int{i}, in.index...)
				out = append(out, in)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, yamlField{name: name, index: []int{i}, typ: f.Type})
	}
	return out
}

// restartKey is one key only a restart changes, and where StartConfig
// holds it.
type restartKey struct {
	name  string
	index []int
}

// restartKeys are StartConfig's keys: a section only StartConfig has is
// one key (upstream, proxy_protocol), a section LiveConfig has keys in
// too is named key by key (limits.max_staged_mib). They are derived
// from the two types, so the list in the log, the README and
// deploy/gomux.yaml cannot drift from what a reload does.
func restartKeys() []restartKey {
	live := map[string]bool{}
	for _, f := range yamlFields(reflect.TypeFor[LiveConfig]()) {
		live[f.name] = true
	}
	var out []restartKey
	for _, f := range yamlFields(reflect.TypeFor[StartConfig]()) {
		if !live[f.name] || f.typ.Kind() != reflect.Struct {
			out = append(out, restartKey{f.name, f.index})
			continue
		}
		for _, sub := range yamlFields(f.typ) {
			out = append(out, restartKey{f.name + "." + sub.name, append(slices.Clone(f.index), sub.index...)})
		}
	}
	return out
}

// RestartOnlyKeys names the config keys only a restart changes, in the
// file's dotted form (listen, upstream, limits.max_staged_mib): a reload
// that changes one of them keeps its running value and says so. Every
// other key is LiveConfig's, which a reload replaces.
func RestartOnlyKeys() []string {
	var out []string
	for _, k := range restartKeys() {
		out = append(out, k.name)
	}
	return out
}

// restartOnly names the restart-only keys whose values differ between
// old and cfg.
func restartOnly(old, cfg *StartConfig) []string {
	ov, nv := reflect.ValueOf(old).Elem(), reflect.ValueOf(cfg).Elem()
	var out []string
	for _, k := range restartKeys() {
		if !reflect.DeepEqual(ov.FieldByIndex(k.index).Interface(), nv.FieldByIndex(k.index).Interface()) {
			out = append(out, k.name)
		}
	}
	return out
}

// decodeFile decodes the YAML file b into each of outs (pointers to
// structs), as one strict decode into a struct holding all their keys
// would: a key none of them has is an error, so is a value of the wrong
// type, each said once, in the order of the file.
func decodeFile(b []byte, outs ...any) error {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return err
	}
	if root.Kind == 0 {
		return nil // an empty file
	}
	types := make([]reflect.Type, len(outs))
	for i, o := range outs {
		types[i] = reflect.TypeOf(o).Elem()
	}
	var msgs []string
	unknownKeys(&root, types, "proxy.Config", &msgs)
	// A value two readers share is wrong for both: said once, by the
	// first.
	said := map[int]bool{}
	for _, o := range outs {
		err := root.Decode(o)
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			if err != nil {
				return err
			}
			continue
		}
		var lines []int
		for _, m := range te.Errors {
			if l := msgLine(m); !said[l] {
				msgs = append(msgs, m)
				lines = append(lines, l)
			}
		}
		for _, l := range lines {
			said[l] = true
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	slices.SortStableFunc(msgs, func(a, b string) int { return msgLine(a) - msgLine(b) })
	return &yaml.TypeError{Errors: msgs}
}

// msgLine is the line a yaml.v3 error message names ("line N: ..."), 0
// for none.
func msgLine(m string) int {
	if sm := lineRE.FindStringSubmatch(m); sm != nil {
		n, _ := strconv.Atoi(sm[1])
		return n
	}
	return 0
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	nodeType        = reflect.TypeFor[yaml.Node]()
)

// unknownKeys adds to msgs, worded as yaml.v3's strict decoder does, each
// key of n that none of ts (the types n is decoded into) has. name
// names the types in the message; "" names the first of them.
func unknownKeys(n *yaml.Node, ts []reflect.Type, name string, msgs *[]string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	var structs, elems []reflect.Type
	for _, t := range ts {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case t == nodeType || reflect.PointerTo(t).Implements(unmarshalerType):
		case t.Kind() == reflect.Struct:
			structs = append(structs, t)
		case t.Kind() == reflect.Map || t.Kind() == reflect.Slice || t.Kind() == reflect.Array:
			elems = append(elems, t.Elem())
		}
	}
	if name == "" && len(structs) > 0 {
		name = structs[0].String()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			unknownKeys(c, ts, name, msgs)
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			unknownKeys(c, elems, "", msgs)
		}
	case yaml.MappingNode:
		if len(structs) == 0 {
			for i := 1; i < len(n.Content); i += 2 {
				unknownKeys(n.Content[i], elems, "", msgs)
			}
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			unknownKey(n.Content[i], n.Content[i+1], structs, name, msgs)
		}
	}
}

// unknownKey checks one key k of a mapping decoded into structs, and its
// value v.
func unknownKey(k, v *yaml.Node, structs []reflect.Type, name string, msgs *[]string) {
	if k.ShortTag() == "!!merge" {
		if v.Kind == yaml.SequenceNode {
			for _, c := range v.Content {
				unknownKeys(c, structs, name, msgs)
			}
			return
		}
		unknownKeys(v, structs, name, msgs)
		return
	}
	var fts []reflect.Type
	for _, st := range structs {
		for _, f := range yamlFields(st) {
			if f.name == k.Value {
				fts = append(fts, f.typ)
			}
		}
	}
	if len(fts) == 0 {
		*msgs = append(*msgs, fmt.Sprintf("line %d: field %s not found in type %s", k.Line, k.Value, name))
		return
	}
	unknownKeys(v, fts, "", msgs)
}
