package main

import (
	"reflect"
	"slices"
)

// medianRun is a Run whose every number is the median of that number over
// runs (a result missing from some runs is the median of the others);
// a flag is true when it is true in every run; text comes from the first.
func medianRun(runs []*Run) *Run {
	out := &Run{}
	src := make([]reflect.Value, len(runs))
	for i, r := range runs {
		src[i] = reflect.ValueOf(r).Elem()
	}
	medianInto(reflect.ValueOf(out).Elem(), src)
	return out
}

func medianInto(dst reflect.Value, src []reflect.Value) {
	if len(src) == 0 {
		return
	}
	switch dst.Kind() {
	case reflect.Pointer:
		var elems []reflect.Value
		for _, s := range src {
			if !s.IsNil() {
				elems = append(elems, s.Elem())
			}
		}
		if len(elems) > 0 {
			dst.Set(reflect.New(dst.Type().Elem()))
			medianInto(dst.Elem(), elems)
		}
	case reflect.Struct:
		for i := range dst.NumField() {
			f := make([]reflect.Value, len(src))
			for j, s := range src {
				f[j] = s.Field(i)
			}
			medianInto(dst.Field(i), f)
		}
	case reflect.Float32, reflect.Float64:
		dst.SetFloat(median(src, reflect.Value.Float))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		dst.SetInt(int64(median(src, func(v reflect.Value) float64 { return float64(v.Int()) })))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		dst.SetUint(uint64(median(src, func(v reflect.Value) float64 { return float64(v.Uint()) })))
	case reflect.Bool:
		all := true
		for _, s := range src {
			all = all && s.Bool()
		}
		dst.SetBool(all)
	default:
		dst.Set(src[0])
	}
}

// median of the values; the mean of the middle two for an even count.
func median(vs []reflect.Value, num func(reflect.Value) float64) float64 {
	xs := make([]float64, len(vs))
	for i, v := range vs {
		xs[i] = num(v)
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}
