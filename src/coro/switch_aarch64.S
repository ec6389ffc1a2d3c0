/*
 * AArch64 (AAPCS64) context switch.
 *
 *   void ca__ctx_switch(void **save_sp, void *new_sp);
 *
 * Saves the callee-saved registers x19-x28, the frame pointer x29, the link
 * register x30 and the low halves d8-d15 of v8-v15 on the current stack,
 * stores sp in *save_sp, loads new_sp, restores the same frame and returns
 * through the restored x30.
 *
 * A new context (built by ca__ctx_make) returns into ca__ctx_entry with
 * x19 = function and x20 = argument.
 */
    .text
    .globl  ca__ctx_switch
    .hidden ca__ctx_switch
    .type   ca__ctx_switch, %function
    .p2align 4
ca__ctx_switch:
    .cfi_startproc
    sub     sp, sp, #160
    .cfi_def_cfa_offset 160
    stp     x19, x20, [sp, #0]
    .cfi_offset x19, -160
    .cfi_offset x20, -152
    stp     x21, x22, [sp, #16]
    .cfi_offset x21, -144
    .cfi_offset x22, -136
    stp     x23, x24, [sp, #32]
    .cfi_offset x23, -128
    .cfi_offset x24, -120
    stp     x25, x26, [sp, #48]
    .cfi_offset x25, -112
    .cfi_offset x26, -104
    stp     x27, x28, [sp, #64]
    .cfi_offset x27, -96
    .cfi_offset x28, -88
    stp     x29, x30, [sp, #80]
    .cfi_offset x29, -80
    .cfi_offset x30, -72
    stp     d8,  d9,  [sp, #96]
    .cfi_offset d8, -64
    .cfi_offset d9, -56
    stp     d10, d11, [sp, #112]
    .cfi_offset d10, -48
    .cfi_offset d11, -40
    stp     d12, d13, [sp, #128]
    .cfi_offset d12, -32
    .cfi_offset d13, -24
    stp     d14, d15, [sp, #144]
    .cfi_offset d14, -16
    .cfi_offset d15, -8
    mov     x9, sp
    str     x9, [x0]
    mov     sp, x1
    ldp     x19, x20, [sp, #0]
    ldp     x21, x22, [sp, #16]
    ldp     x23, x24, [sp, #32]
    ldp     x25, x26, [sp, #48]
    ldp     x27, x28, [sp, #64]
    ldp     x29, x30, [sp, #80]
    ldp     d8,  d9,  [sp, #96]
    ldp     d10, d11, [sp, #112]
    ldp     d12, d13, [sp, #128]
    ldp     d14, d15, [sp, #144]
    add     sp, sp, #160
    .cfi_def_cfa_offset 0
    .cfi_restore x19
    .cfi_restore x20
    .cfi_restore x21
    .cfi_restore x22
    .cfi_restore x23
    .cfi_restore x24
    .cfi_restore x25
    .cfi_restore x26
    .cfi_restore x27
    .cfi_restore x28
    .cfi_restore x29
    .cfi_restore x30
    .cfi_restore d8
    .cfi_restore d9
    .cfi_restore d10
    .cfi_restore d11
    .cfi_restore d12
    .cfi_restore d13
    .cfi_restore d14
    .cfi_restore d15
    ret
    .cfi_endproc
    .size   ca__ctx_switch, .-ca__ctx_switch

    .globl  ca__ctx_entry
    .hidden ca__ctx_entry
    .type   ca__ctx_entry, %function
    .p2align 4
ca__ctx_entry:
    .cfi_startproc
    .cfi_undefined x30
    /* The first frame's return address points past this nop, inside the
     * CFI range, so a backtrace taken mid-switch still ends cleanly. */
    nop
    .globl  ca__ctx_entry_start
    .hidden ca__ctx_entry_start
ca__ctx_entry_start:
    mov     x0, x20
    blr     x19
    brk     #1
    .cfi_endproc
    .size   ca__ctx_entry, .-ca__ctx_entry

    .section .note.GNU-stack,"",%progbits
