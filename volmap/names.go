package volmap

import (
	"fmt"
	"strings"
)

// The file-name <-> LV-name codec.
//
// A file name that is already a valid LV name maps to itself. Every other
// name is made valid by escaping single bytes as "+XX" (two upper-case hex
// digits), since '+' is one of the characters LVM allows. A byte is escaped
// when:
//   - it is outside [A-Za-z0-9+_.-];
//   - it is a '+' followed by two upper-case hex digits (so that "+41" as a
//     file name does not decode as "A");
//   - it is a leading '-';
//   - it is the first byte of a name that starts with "snapshot" or
//     "pvmove" (LVM reserves those prefixes);
//   - it is the '_' that starts one of LVM's reserved suffixes ("_tmeta",
//     "_rimage", ...) anywhere in the name;
//   - it is the first byte of the whole name "." or "..".
//
// Escapes only ever produce '+', digits and upper-case A-F, and the reserved
// words are '_' followed by lower-case letters, so an escape can never
// complete a reserved word: checking the file name is the same as checking
// its encoding.
//
// Decoding is strict: an LV name is a file only if it is the canonical
// encoding of that file name (DecodeName re-encodes and compares), so two
// LVs never show up as the same file.

// MaxLVName is LVM's limit on the length of an LV name.
const MaxLVName = 127

// maxDMName is device-mapper's limit on a device name (DM_NAME_LEN 128,
// including the terminating NUL).
const maxDMName = 127

// maxFullName bounds "VG/LV": lvcreate 2.03.16 refuses longer pairs with
// `Internal error: LV name "vg/lv" length N is not supported`, measured
// with VG names of 3 and 12 characters (lvrename allows one more).
const maxFullName = 125

// reservedPrefixes are LV name prefixes LVM refuses.
var reservedPrefixes = []string{"snapshot", "pvmove"}

// reservedWords are the substrings LVM refuses anywhere in an LV name
// (lib/metadata/metadata.c, apply_lvname_restrictions), without their
// leading '_'.
var reservedWords = []string{
	"cdata", "cmeta", "corig", "cpool", "cvol", "wcorig", "mimage", "mlog",
	"rimage", "rmeta", "tdata", "tmeta", "vdata", "imeta", "iorig", "pmspare",
	"vorigin",
}

const hexDigits = "0123456789ABCDEF"

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func unhex(c byte) byte {
	if c <= '9' {
		return c - '0'
	}
	return c - 'A' + 10
}

// lvChar reports whether LVM accepts c in an LV or VG name.
func lvChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '+' || c == '_' || c == '.' || c == '-'
}

// startsReserved reports whether s (the bytes after a '_') begins one of
// LVM's reserved suffixes.
func startsReserved(s string) bool {
	for _, w := range reservedWords {
		if strings.HasPrefix(s, w) {
			return true
		}
	}
	return false
}

// EncodeName returns the LV name that stores the file called file. The
// error wraps ErrInvalidName (empty, '/' or NUL in the name) or
// ErrNameTooLong (the encoding exceeds MaxLVName characters) and says why.
// The VG-dependent limits are checked by CheckDMName.
func EncodeName(file string) (string, error) {
	switch {
	case file == "":
		return "", fmt.Errorf("%w: empty file name", ErrInvalidName)
	case strings.IndexByte(file, '/') >= 0:
		return "", fmt.Errorf("%w: %q contains '/'", ErrInvalidName, file)
	case strings.IndexByte(file, 0) >= 0:
		return "", fmt.Errorf("%w: %q contains a NUL byte", ErrInvalidName, file)
	}
	var b strings.Builder
	b.Grow(len(file))
	for i := 0; i < len(file); i++ {
		c := file[i]
		esc := false
		switch {
		case !lvChar(c):
			esc = true
		case c == '+':
			esc = i+2 < len(file) && isHex(file[i+1]) && isHex(file[i+2])
		case c == '_':
			esc = startsReserved(file[i+1:])
		case i == 0:
			esc = c == '-' || file == "." || file == ".."
			for _, p := range reservedPrefixes {
				esc = esc || strings.HasPrefix(file, p)
			}
		}
		if esc {
			b.WriteByte('+')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&15])
		} else {
			b.WriteByte(c)
		}
	}
	lv := b.String()
	if len(lv) > MaxLVName {
		return "", fmt.Errorf("%w: %q needs an LV name of %d characters (%q), LVM allows %d",
			ErrNameTooLong, file, len(lv), lv, MaxLVName)
	}
	return lv, nil
}

// DecodeName returns the file name stored in the LV called lv. ok is false
// when lv is not a valid LV name or not the canonical encoding of any file
// name (such LVs are not files: they are left alone and never shown).
func DecodeName(lv string) (file string, ok bool) {
	if CheckLVName(lv) != nil {
		return "", false
	}
	if strings.IndexByte(lv, '+') < 0 {
		// Fast path: no escapes, and a valid LV name is its own encoding.
		return lv, true
	}
	var b strings.Builder
	b.Grow(len(lv))
	for i := 0; i < len(lv); i++ {
		c := lv[i]
		if c == '+' && i+2 < len(lv) && isHex(lv[i+1]) && isHex(lv[i+2]) {
			c = unhex(lv[i+1])<<4 | unhex(lv[i+2])
			i += 2
		}
		b.WriteByte(c)
	}
	file = b.String()
	if again, err := EncodeName(file); err != nil || again != lv {
		return "", false
	}
	return file, true
}

// CheckLVName reports whether LVM accepts lv as an LV name, with an error
// wrapping ErrInvalidName or ErrNameTooLong that says which rule it breaks.
func CheckLVName(lv string) error {
	switch {
	case lv == "":
		return fmt.Errorf("%w: empty LV name", ErrInvalidName)
	case len(lv) > MaxLVName:
		return fmt.Errorf("%w: LV name %q is %d characters, LVM allows %d", ErrNameTooLong, lv, len(lv), MaxLVName)
	case lv == "." || lv == "..":
		return fmt.Errorf("%w: LV name %q is reserved", ErrInvalidName, lv)
	case lv[0] == '-':
		return fmt.Errorf("%w: LV name %q starts with '-'", ErrInvalidName, lv)
	}
	for i := 0; i < len(lv); i++ {
		if !lvChar(lv[i]) {
			return fmt.Errorf("%w: LV name %q contains %q; LVM allows only [A-Za-z0-9+_.-]", ErrInvalidName, lv, lv[i])
		}
	}
	for _, p := range reservedPrefixes {
		if strings.HasPrefix(lv, p) {
			return fmt.Errorf("%w: LV name %q starts with %q, which LVM reserves", ErrInvalidName, lv, p)
		}
	}
	for _, w := range reservedWords {
		if strings.Contains(lv, "_"+w) {
			return fmt.Errorf("%w: LV name %q contains %q, which LVM reserves", ErrInvalidName, lv, "_"+w)
		}
	}
	return nil
}

// DMName returns the device-mapper name of LV lv in VG vg: both names with
// every '-' doubled, joined by '-' (the node is /dev/mapper/DMName).
func DMName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// CheckDMName reports whether LV lv can exist in VG vg: lv is a valid LV
// name, the device-mapper name stays within 127 characters and "vg/lv"
// within the 125 characters lvcreate accepts. Errors wrap ErrNameTooLong or
// ErrInvalidName and say which limit is exceeded.
func CheckDMName(vg, lv string) error {
	if err := CheckLVName(lv); err != nil {
		return err
	}
	if n := len(vg) + 1 + len(lv); n > maxFullName {
		return fmt.Errorf("%w: %s/%s is %d characters, lvm2 accepts %d for VG and LV name together",
			ErrNameTooLong, vg, lv, n, maxFullName)
	}
	if dm := DMName(vg, lv); len(dm) > maxDMName {
		return fmt.Errorf("%w: device-mapper name %q is %d characters ('-' is doubled), the limit is %d",
			ErrNameTooLong, dm, len(dm), maxDMName)
	}
	return nil
}

// HiddenName returns an LV name that is valid for LVM but that DecodeName
// never accepts, for temporary volumes that must not appear as files (it
// starts with "+2F", the escape of '/', which no file name contains). label
// must consist of [A-Za-z0-9_.-].
func HiddenName(label string) (string, error) {
	lv := "+2F" + label
	if err := CheckLVName(lv); err != nil {
		return "", err
	}
	if strings.IndexByte(label, '+') >= 0 {
		return "", fmt.Errorf("%w: hidden name label %q contains '+'", ErrInvalidName, label)
	}
	return lv, nil
}
