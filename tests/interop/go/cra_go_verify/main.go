// Command cra-go-verify checks CRA's ledger output with Go's independent
// implementation of signed notes and transparency logs,
// golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog.
//
// It is a test tool for CRA's interoperability tests (tests/interop). Every
// subcommand exits 0 when everything verifies, 1 with a message on stderr when
// something does not, and 2 on a usage error.
//
//	cra-go-verify note VKEYS NOTE_FILE...
//	cra-go-verify proof VKEYS PROOF_FILE ENTRY_FILE
//	cra-go-verify consistency VKEYS OLD_CHECKPOINT_FILE NEW_CHECKPOINT_FILE PROOF_JSON_FILE
//
// VKEYS is one verifier key or several separated by commas
// ("name+hexid+base64key,name+hexid+base64key"); signatures by other keys are
// ignored, as note.Open does. On success each subcommand prints what it
// verified on stdout, one fact per line.
//
// Build it in GOPATH mode against Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode GOFLAGS= go build -o cra-go-verify .
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const usage = `usage:
  cra-go-verify note VKEYS NOTE_FILE...
  cra-go-verify proof VKEYS PROOF_FILE ENTRY_FILE
  cra-go-verify consistency VKEYS OLD_CHECKPOINT_FILE NEW_CHECKPOINT_FILE PROOF_JSON_FILE
VKEYS is a comma-separated list of verifier keys.`

const tlogProofHeader = "c2sp.org/tlog-proof@v1"

// usageError marks a mistake in the command line rather than in what is verified.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	err := run(os.Args[1:])
	if err == nil {
		return
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(os.Stderr, "cra-go-verify: %s\n%s\n", ue.msg, usage)
		os.Exit(2)
	}
	fmt.Fprintf(os.Stderr, "cra-go-verify: %v\n", err)
	os.Exit(1)
}

func run(args []string) error {
	if len(args) == 0 {
		return usageError{"missing subcommand"}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "note":
		if len(rest) < 2 {
			return usageError{"note needs VKEYS and at least one NOTE_FILE"}
		}
		return cmdNote(rest[0], rest[1:])
	case "proof":
		if len(rest) != 3 {
			return usageError{"proof needs VKEYS PROOF_FILE ENTRY_FILE"}
		}
		return cmdProof(rest[0], rest[1], rest[2])
	case "consistency":
		if len(rest) != 4 {
			return usageError{"consistency needs VKEYS OLD_CHECKPOINT_FILE NEW_CHECKPOINT_FILE PROOF_JSON_FILE"}
		}
		return cmdConsistency(rest[0], rest[1], rest[2], rest[3])
	default:
		return usageError{fmt.Sprintf("unknown subcommand %q", cmd)}
	}
}

// verifiers parses a comma-separated list of verifier keys with note.NewVerifier.
func verifiers(vkeys string) (note.Verifiers, error) {
	var list []note.Verifier
	for _, vkey := range strings.Split(vkeys, ",") {
		if vkey == "" {
			return nil, usageError{"empty verifier key in VKEYS"}
		}
		v, err := note.NewVerifier(vkey)
		if err != nil {
			return nil, fmt.Errorf("verifier key %q: %w", vkey, err)
		}
		list = append(list, v)
	}
	return note.VerifierList(list...), nil
}

// openNote reads a signed note from a file and opens it with note.Open.
func openNote(known note.Verifiers, path string) (*note.Note, error) {
	msg, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return openNoteBytes(known, msg, path)
}

func openNoteBytes(known note.Verifiers, msg []byte, what string) (*note.Note, error) {
	n, err := note.Open(msg, known)
	if err != nil {
		return nil, fmt.Errorf("%s: note.Open: %w", what, err)
	}
	return n, nil
}

func cmdNote(vkeys string, files []string) error {
	known, err := verifiers(vkeys)
	if err != nil {
		return err
	}
	for _, path := range files {
		n, err := openNote(known, path)
		if err != nil {
			return err
		}
		for _, sig := range n.Sigs {
			fmt.Printf("%s: verified %s+%08x\n", path, sig.Name, sig.Hash)
		}
		for _, sig := range n.UnverifiedSigs {
			fmt.Printf("%s: unverified %s+%08x\n", path, sig.Name, sig.Hash)
		}
	}
	return nil
}

// checkpoint is the body of a C2SP tlog-checkpoint. tlog.ParseTree is not used
// because it accepts only the Go checksum database's own origin line.
type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

func parseCheckpoint(text string) (checkpoint, error) {
	var c checkpoint
	if !strings.HasSuffix(text, "\n") {
		return c, errors.New("checkpoint body does not end with a newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return c, fmt.Errorf("checkpoint body has %d lines, need origin, size and root hash", len(lines))
	}
	c.origin = lines[0]
	if c.origin == "" {
		return c, errors.New("checkpoint origin line is empty")
	}
	size, err := parseDecimal(lines[1])
	if err != nil {
		return c, fmt.Errorf("checkpoint size line: %w", err)
	}
	c.size = size
	root, err := parseHash(lines[2])
	if err != nil {
		return c, fmt.Errorf("checkpoint root hash line: %w", err)
	}
	c.root = root
	for i, ext := range lines[3:] {
		if ext == "" {
			return c, fmt.Errorf("checkpoint line %d: empty extension line", i+4)
		}
	}
	return c, nil
}

// openCheckpoint opens a signed checkpoint note and parses its body.
func openCheckpoint(known note.Verifiers, msg []byte, what string) (checkpoint, error) {
	n, err := openNoteBytes(known, msg, what)
	if err != nil {
		return checkpoint{}, err
	}
	c, err := parseCheckpoint(n.Text)
	if err != nil {
		return checkpoint{}, fmt.Errorf("%s: %w", what, err)
	}
	return c, nil
}

// parseDecimal accepts a non-negative decimal integer without leading zeros.
func parseDecimal(s string) (int64, error) {
	if s == "" || (len(s) > 1 && s[0] == '0') || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a decimal number without leading zeros", s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q: %w", s, err)
	}
	return n, nil
}

// parseHash decodes a canonical standard base64 encoding of a 32-byte hash.
func parseHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	raw, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return h, fmt.Errorf("%q is not base64: %w", s, err)
	}
	if len(raw) != tlog.HashSize || base64.StdEncoding.EncodeToString(raw) != s {
		return h, fmt.Errorf("%q is not the canonical base64 of a %d-byte hash", s, tlog.HashSize)
	}
	copy(h[:], raw)
	return h, nil
}

// tlogProof is a parsed C2SP tlog-proof; the checkpoint is kept verbatim.
type tlogProof struct {
	index      int64
	path       tlog.RecordProof
	checkpoint []byte
}

func parseTlogProof(data []byte) (tlogProof, error) {
	var p tlogProof
	i := bytes.Index(data, []byte("\n\n"))
	if i < 0 {
		return p, errors.New("tlog-proof has no blank line before the checkpoint")
	}
	head, rest := string(data[:i]), data[i+2:]
	lines := strings.Split(head, "\n")
	if lines[0] != tlogProofHeader {
		return p, fmt.Errorf("tlog-proof line 1 is %q, want %q", lines[0], tlogProofHeader)
	}
	at := 1
	if at < len(lines) && strings.HasPrefix(lines[at], "extra ") {
		if _, err := base64.StdEncoding.Strict().DecodeString(strings.TrimPrefix(lines[at], "extra ")); err != nil {
			return p, fmt.Errorf("tlog-proof line %d: extra data is not base64: %w", at+1, err)
		}
		at++
	}
	if at >= len(lines) || !strings.HasPrefix(lines[at], "index ") {
		return p, fmt.Errorf("tlog-proof line %d is not an index line", at+1)
	}
	index, err := parseDecimal(strings.TrimPrefix(lines[at], "index "))
	if err != nil {
		return p, fmt.Errorf("tlog-proof line %d: %w", at+1, err)
	}
	p.index = index
	for j, line := range lines[at+1:] {
		h, err := parseHash(line)
		if err != nil {
			return p, fmt.Errorf("tlog-proof line %d: %w", at+2+j, err)
		}
		p.path = append(p.path, h)
	}
	p.checkpoint = rest
	return p, nil
}

func cmdProof(vkeys, proofFile, entryFile string) error {
	known, err := verifiers(vkeys)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(proofFile)
	if err != nil {
		return err
	}
	entry, err := os.ReadFile(entryFile)
	if err != nil {
		return err
	}
	p, err := parseTlogProof(data)
	if err != nil {
		return fmt.Errorf("%s: %w", proofFile, err)
	}
	c, err := openCheckpoint(known, p.checkpoint, proofFile+" (checkpoint)")
	if err != nil {
		return err
	}
	if err := tlog.CheckRecord(p.path, c.size, c.root, p.index, tlog.RecordHash(entry)); err != nil {
		return fmt.Errorf("%s: tlog.CheckRecord(index %d, size %d): %w", proofFile, p.index, c.size, err)
	}
	fmt.Printf("origin %s\nsize %d\nindex %d\nincluded\n", c.origin, c.size, p.index)
	return nil
}

// consistencyProof is the JSON a consistency test hands over.
type consistencyProof struct {
	Size1 *int64   `json:"size1"`
	Size2 *int64   `json:"size2"`
	Proof []string `json:"proof"`
}

func cmdConsistency(vkeys, oldFile, newFile, proofFile string) error {
	known, err := verifiers(vkeys)
	if err != nil {
		return err
	}
	oldNote, err := os.ReadFile(oldFile)
	if err != nil {
		return err
	}
	newNote, err := os.ReadFile(newFile)
	if err != nil {
		return err
	}
	oldC, err := openCheckpoint(known, oldNote, oldFile)
	if err != nil {
		return err
	}
	newC, err := openCheckpoint(known, newNote, newFile)
	if err != nil {
		return err
	}
	if oldC.origin != newC.origin {
		return fmt.Errorf("the checkpoints are for different logs: %q and %q", oldC.origin, newC.origin)
	}

	raw, err := os.ReadFile(proofFile)
	if err != nil {
		return err
	}
	var cp consistencyProof
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cp); err != nil {
		return fmt.Errorf("%s: %w", proofFile, err)
	}
	if cp.Size1 == nil || cp.Size2 == nil || cp.Proof == nil {
		return fmt.Errorf("%s: size1, size2 and proof are all required", proofFile)
	}
	if *cp.Size1 != oldC.size || *cp.Size2 != newC.size {
		return fmt.Errorf("%s: the proof is for sizes %d -> %d but the checkpoints have sizes %d -> %d",
			proofFile, *cp.Size1, *cp.Size2, oldC.size, newC.size)
	}
	proof := make(tlog.TreeProof, 0, len(cp.Proof))
	for i, s := range cp.Proof {
		h, err := parseHash(s)
		if err != nil {
			return fmt.Errorf("%s: proof node %d: %w", proofFile, i, err)
		}
		proof = append(proof, h)
	}
	// CheckTree(p, t, th, n, h): the tree of size t with hash th contains as a
	// prefix the tree of size n with hash h, so the new tree comes first.
	if err := tlog.CheckTree(proof, newC.size, newC.root, oldC.size, oldC.root); err != nil {
		return fmt.Errorf("%s: tlog.CheckTree(size %d -> %d): %w", proofFile, oldC.size, newC.size, err)
	}
	fmt.Printf("origin %s\nsize1 %d\nsize2 %d\nconsistent\n", oldC.origin, oldC.size, newC.size)
	return nil
}
