package volmap

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestEncodeName(t *testing.T) {
	for _, tc := range []struct {
		file, lv string
		err      error
	}{
		{"web", "web", nil},
		{"web-01.img", "web-01.img", nil},
		{"A_b.c-d", "A_b.c-d", nil},
		{"c++", "c++", nil},
		{"+", "+", nil},
		{"a+z9", "a+z9", nil},
		{"a+9z", "a+9z", nil},
		{"a+9", "a+9", nil},
		{"a+41", "a+2B41", nil}, // "+41" would decode as "A"
		{"+FF", "+2BFF", nil},
		{"+ff", "+ff", nil}, // only upper-case hex is an escape
		{"my disk", "my+20disk", nil},
		{"é", "+C3+A9", nil},
		{"a%b", "a+25b", nil},
		{"-x", "+2Dx", nil},
		{"x-", "x-", nil},
		{"--", "+2D-", nil},
		{".", "+2E", nil},
		{"..", "+2E.", nil},
		{"...", "...", nil},
		{".hidden", ".hidden", nil},
		{"snapshot", "+73napshot", nil},
		{"snapshot1", "+73napshot1", nil},
		{"my-snapshot", "my-snapshot", nil},
		{"pvmove0", "+70vmove0", nil},
		{"pvmov", "pvmov", nil},
		{"a_tmeta", "a+5Ftmeta", nil},
		{"a_tmetab", "a+5Ftmetab", nil},
		{"_rimage_0", "+5Frimage_0", nil},
		{"x__cdata", "x_+5Fcdata", nil},
		{"a_tmet", "a_tmet", nil},
		{"a_TMETA", "a_TMETA", nil},
		{"_cvol_cpool", "+5Fcvol+5Fcpool", nil},
		{"lvol0_pmspare", "lvol0+5Fpmspare", nil},
		{strings.Repeat("a", 127), strings.Repeat("a", 127), nil},
		{"", "", ErrInvalidName},
		{"a/b", "", ErrInvalidName},
		{"a\x00b", "", ErrInvalidName},
		{strings.Repeat("a", 128), "", ErrNameTooLong},
		{strings.Repeat(" ", 43), "", ErrNameTooLong},
	} {
		lv, err := EncodeName(tc.file)
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("EncodeName(%q) = %q, %v; want error %v", tc.file, lv, err, tc.err)
			}
			continue
		}
		if err != nil || lv != tc.lv {
			t.Errorf("EncodeName(%q) = %q, %v; want %q", tc.file, lv, err, tc.lv)
			continue
		}
		if err := CheckLVName(lv); err != nil {
			t.Errorf("EncodeName(%q) = %q, which LVM refuses: %v", tc.file, lv, err)
		}
		if back, ok := DecodeName(lv); !ok || back != tc.file {
			t.Errorf("DecodeName(%q) = %q, %v; want %q", lv, back, ok, tc.file)
		}
	}
}

func TestDecodeNameRejects(t *testing.T) {
	for _, lv := range []string{
		"",              // empty
		"+61",           // 'a' needs no escape: not canonical
		"+2B",           // a lone '+' is written "+"
		"a+2Bz",         // idem
		"+2Fetc",        // '/' cannot be in a file name
		"a+00",          // NUL neither
		"-x", ".", "..", // not valid LV names
		"snapshot1", "pvmove0", // reserved prefixes
		"a_tmeta", "[a_tdata]", // reserved words, internal LVs
		"a b", "a%b", "é", // characters LVM refuses
		"+73napshut",             // escaped 's' where no escape was needed
		"+2E+2E",                 // ".." is written "+2E."
		"+5Fx",                   // '_' needs no escape before "x"
		strings.Repeat("a", 128), // too long
	} {
		if f, ok := DecodeName(lv); ok {
			t.Errorf("DecodeName(%q) = %q, want rejection", lv, f)
		}
	}
}

func TestCheckLVName(t *testing.T) {
	for _, tc := range []struct {
		lv   string
		err  error
		want string // part of the message
	}{
		{"ok.name+_-9", nil, ""},
		{"a b", ErrInvalidName, "contains"},
		{"-a", ErrInvalidName, "starts with '-'"},
		{"snapshotX", ErrInvalidName, `"snapshot"`},
		{"x_vorigin", ErrInvalidName, `"_vorigin"`},
		{"..", ErrInvalidName, "reserved"},
		{strings.Repeat("z", 128), ErrNameTooLong, "127"},
	} {
		err := CheckLVName(tc.lv)
		if tc.err == nil {
			if err != nil {
				t.Errorf("CheckLVName(%q) = %v", tc.lv, err)
			}
			continue
		}
		if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckLVName(%q) = %v; want %v mentioning %q", tc.lv, err, tc.err, tc.want)
		}
	}
}

func TestCheckDMName(t *testing.T) {
	for _, tc := range []struct {
		vg, lv string
		err    error
	}{
		{"vg0", "web", nil},
		{"vgx", strings.Repeat("a", 121), nil},                     // measured: lvcreate accepts
		{"vgx", strings.Repeat("a", 122), ErrNameTooLong},          // measured: lvcreate refuses
		{"vg0123456789", strings.Repeat("a", 113), ErrNameTooLong}, // 12+1+113 > 125
		{"vgx", strings.Repeat("a-", 60), ErrNameTooLong},          // dm name 4+240 characters
		{"my-vg", strings.Repeat("a-", 40) + "a", ErrNameTooLong},  // dm name 7+3*40+1 = 128
		{"my-vg", strings.Repeat("a-", 39) + "a", nil},             // dm name 7+3*39+1 = 125
		{"vg", "a b", ErrInvalidName},
	} {
		err := CheckDMName(tc.vg, tc.lv)
		if tc.err == nil && err != nil || tc.err != nil && !errors.Is(err, tc.err) {
			t.Errorf("CheckDMName(%q, %q) = %v, want %v", tc.vg, tc.lv, err, tc.err)
		}
	}
	if got := DMName("my-vg", "a-b"); got != "my--vg-a--b" {
		t.Errorf("DMName = %q", got)
	}
}

func TestHiddenName(t *testing.T) {
	h, err := HiddenName("volfs-aside-0123abcd")
	if err != nil {
		t.Fatal(err)
	}
	if CheckLVName(h) != nil {
		t.Fatalf("hidden name %q is not a valid LV name", h)
	}
	if f, ok := DecodeName(h); ok {
		t.Fatalf("hidden name %q decodes to file %q", h, f)
	}
	if _, err := HiddenName("a+b"); err == nil {
		t.Fatal("HiddenName accepted a label with '+'")
	}
}

func ExampleEncodeName() {
	for _, f := range []string{"web.img", "my disk", "snapshot-1", "a_tmeta", "..", "c++", "x+41"} {
		lv, _ := EncodeName(f)
		back, _ := DecodeName(lv)
		fmt.Printf("%-12q -> %-14q -> %q\n", f, lv, back)
	}
	_, err := EncodeName("a/b")
	fmt.Println(err)
	// Output:
	// "web.img"    -> "web.img"      -> "web.img"
	// "my disk"    -> "my+20disk"    -> "my disk"
	// "snapshot-1" -> "+73napshot-1" -> "snapshot-1"
	// "a_tmeta"    -> "a+5Ftmeta"    -> "a_tmeta"
	// ".."         -> "+2E."         -> ".."
	// "c++"        -> "c++"          -> "c++"
	// "x+41"       -> "x+2B41"       -> "x+41"
	// invalid name: "a/b" contains '/'
}

func FuzzNames(f *testing.F) {
	for _, s := range []string{"web", "a+41", "+", "snapshot", "pvmove", "-", ".", "..", "_tmeta", "a b", "é", "+2F", "+2E.", "a_cpool_"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		lv, err := EncodeName(s)
		if err == nil {
			if cerr := CheckLVName(lv); cerr != nil {
				t.Fatalf("EncodeName(%q) = %q, not a valid LV name: %v", s, lv, cerr)
			}
			back, ok := DecodeName(lv)
			if !ok || back != s {
				t.Fatalf("DecodeName(EncodeName(%q)=%q) = %q, %v", s, lv, back, ok)
			}
			if CheckLVName(s) == nil && !strings.Contains(s, "+") && lv != s {
				t.Fatalf("valid LV name %q encoded as %q", s, lv)
			}
		} else if !errors.Is(err, ErrInvalidName) && !errors.Is(err, ErrNameTooLong) {
			t.Fatalf("EncodeName(%q): unexpected error kind: %v", s, err)
		}
		// Any string, taken as an LV name: if it decodes, it is the
		// canonical encoding of what it decodes to.
		if f, ok := DecodeName(s); ok {
			again, err := EncodeName(f)
			if err != nil || again != s {
				t.Fatalf("DecodeName(%q) = %q but EncodeName gives %q, %v", s, f, again, err)
			}
		}
	})
}
