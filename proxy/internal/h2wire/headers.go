package h2wire

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerReader decodes a connection's header blocks into one
// MetaHeadersFrame that it reuses for every block.
//
// Written by hand because x/net's Framer, given ReadMetaHeaders, allocates
// per block a frame, a closure with three escaping variables and a field
// slice grown from nothing: about nine allocations a block, eighteen of a
// proxied request's (one block from the app, one from the upstream), with
// no option to reuse them. The checks are its readMetaFrame's, in the same
// order, with the same errors and codes (TestHeaderReaderMatchesXNet reads
// the same bytes through both).
type headerReader struct {
	dec   *hpack.Decoder
	frame http2.MetaHeadersFrame

	// The block being read.
	headersRemain, trailersRemain uint32
	sawRegular                    bool
	invalid                       error
}

// keepFields bounds the field slice kept between blocks: one huge block
// must not pin its array for the connection's life.
const keepFields = 64

func newHeaderReader() *headerReader {
	r := &headerReader{dec: hpack.NewDecoder(4096, nil)} // SETTINGS_HEADER_TABLE_SIZE's default, which both sides keep
	r.dec.SetEmitFunc(r.emit)
	return r
}

// next reads fr's next frame; a HEADERS frame comes back decoded with its
// block (read).
func (r *headerReader) next(fr *http2.Framer) (http2.Frame, error) {
	f, err := fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return r.read(fr, hf)
	}
	return f, nil
}

// read decodes the block hf starts, reading its CONTINUATION frames from
// fr. The frame it returns is valid until the next read.
func (r *headerReader) read(fr *http2.Framer, hf *http2.HeadersFrame) (http2.Frame, error) {
	maxList := fr.MaxHeaderListSize
	if maxList == 0 {
		maxList = 16 << 20 // the Framer's default
	}
	fields := r.frame.Fields[:0]
	if cap(fields) > keepFields {
		fields = nil
	}
	r.frame = http2.MetaHeadersFrame{HeadersFrame: hf, Fields: fields}
	r.headersRemain, r.trailersRemain = maxList, maxList
	r.sawRegular, r.invalid = false, nil
	r.dec.SetEmitEnabled(true)
	r.dec.SetMaxStringLength(int(maxList))

	frag, ended := hf.HeaderBlockFragment(), hf.HeadersEnded()
	for {
		// Far past the list's limit, or more after an invalid field
		// (whose size was no longer counted): the connection goes.
		if int64(len(frag)) > 2*int64(r.headersRemain+r.trailersRemain) || r.invalid != nil {
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := r.dec.Write(frag); err != nil {
			return nil, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf, ok := f.(*http2.ContinuationFrame)
		if !ok { // the Framer checks the order; this is only a guard
			return nil, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	if err := r.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if r.invalid != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: r.invalid}
	}
	pseudo, _ := Split(r.frame.Fields)
	if err := checkPseudos(pseudo); err != nil {
		return nil, http2.StreamError{StreamID: hf.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &r.frame, nil
}

// emit takes one decoded field: readMetaFrame's emit function.
func (r *headerReader) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		r.invalid = headerFieldValueError(hf.Name) // the value may be secret: not in the error
	}
	if strings.HasPrefix(hf.Name, ":") {
		if r.sawRegular {
			r.invalid = errPseudoAfterRegular
		}
	} else {
		r.sawRegular = true
		if !validWireName(hf.Name) {
			r.invalid = headerFieldNameError(hf.Name)
		}
	}
	if r.invalid != nil {
		r.dec.SetEmitEnabled(false)
		return
	}
	remain, size := &r.headersRemain, hf.Size()
	if hf.Name == "trailer" {
		// Trailers get a budget of their own, counted per name it
		// announces, as x/net does.
		remain = &r.trailersRemain
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	}
	if size > *remain {
		r.dec.SetEmitEnabled(false)
		r.frame.Truncated = true
		r.headersRemain, r.trailersRemain = 0, 0
		return
	}
	*remain -= size
	r.frame.Fields = append(r.frame.Fields, hf)
}

// validWireName: a token in lower case (RFC 9113, 8.2.1).
func validWireName(v string) bool {
	if v == "" {
		return false
	}
	for _, c := range v {
		if !httpguts.IsTokenRune(c) || 'A' <= c && c <= 'Z' {
			return false
		}
	}
	return true
}

// Split cuts a block's fields into its leading pseudo-fields (the reader
// lets none come after a regular field) and the regular ones:
// MetaHeadersFrame's PseudoFields and RegularFields in one scan, without
// their copy of every field, which is on every request's path.
func Split(fields []hpack.HeaderField) (pseudo, regular []hpack.HeaderField) {
	for i := range fields {
		if !strings.HasPrefix(fields[i].Name, ":") {
			return fields[:i], fields[i:]
		}
	}
	return fields, nil
}

// checkPseudos: request or response pseudo-fields, known ones, each once.
func checkPseudos(pf []hpack.HeaderField) error {
	var request, response bool
	for i := range pf {
		hf := &pf[i]
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			request = true
		case ":status":
			response = true
		default:
			return pseudoHeaderError(hf.Name)
		}
		for j := range i {
			if pf[j].Name == hf.Name {
				return duplicatePseudoHeaderError(hf.Name)
			}
		}
	}
	if request && response {
		return errMixPseudoHeaderTypes
	}
	return nil
}

// The errors, worded as x/net's.
var (
	errMixPseudoHeaderTypes = errors.New("mix of request and response pseudo headers")
	errPseudoAfterRegular   = errors.New("pseudo header field after regular")
)

type pseudoHeaderError string

func (e pseudoHeaderError) Error() string { return fmt.Sprintf("invalid pseudo-header %q", string(e)) }

type duplicatePseudoHeaderError string

func (e duplicatePseudoHeaderError) Error() string {
	return fmt.Sprintf("duplicate pseudo-header %q", string(e))
}

type headerFieldNameError string

func (e headerFieldNameError) Error() string {
	return fmt.Sprintf("invalid header field name %q", string(e))
}

type headerFieldValueError string

func (e headerFieldValueError) Error() string {
	return fmt.Sprintf("invalid header field value for %q", string(e))
}
