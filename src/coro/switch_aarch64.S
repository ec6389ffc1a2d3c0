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
    stp     x21, x22, [sp, #16]
    stp     x23, x24, [sp, #32]
    stp     x25, x26, [sp, #48]
    stp     x27, x28, [sp, #64]
    stp     x29, x30, [sp, #80]
    .cfi_offset x29, -80
    .cfi_offset x30, -72
    stp     d8,  d9,  [sp, #96]
    stp     d10, d11, [sp, #112]
    stp     d12, d13, [sp, #128]
    stp     d14, d15, [sp, #144]
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
    .cfi_restore x29
    .cfi_restore x30
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
    mov     x0, x20
    blr     x19
    brk     #1
    .cfi_endproc
    .size   ca__ctx_entry, .-ca__ctx_entry

    .section .note.GNU-stack,"",%progbits
